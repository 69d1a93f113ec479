//! The parser's view of JSON: a string read character by character ([`Str`]) and
//! where a value ends ([`Extent`]), so call objects can be followed as they stream
//! without buffering or validating them.

/// A JSON string's raw text, quotes included.
#[derive(Debug, Default)]
pub(super) struct Str {
    raw: String,
    escaped: bool,
}

impl Str {
    pub(super) fn opened() -> Self {
        Str { raw: "\"".to_string(), escaped: false }
    }

    /// Takes `c`; `true` when it closed the string.
    pub(super) fn take(&mut self, c: char) -> bool {
        self.raw.push(c);
        if self.escaped {
            self.escaped = false;
        } else if c == '\\' {
            self.escaped = true;
        } else if c == '"' {
            return true;
        }
        false
    }

    pub(super) fn decode(&self) -> Option<String> {
        serde_json::from_str(&self.raw).ok()
    }
}

/// Where one JSON value ends: nesting, strings, scalars. Not a validator: the grammar
/// validates, this only finds the end.
#[derive(Debug, Default)]
pub(super) struct Extent {
    started: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
    scalar: bool,
    /// The value is a string.
    pub(super) string: bool,
}

pub(super) enum Scan {
    /// Whitespace before the value.
    Skip,
    /// Part of the value, which goes on.
    Take,
    /// The value's last character.
    Last,
    /// Not part of the value, which ended before it.
    Ended,
    /// Cannot start a value.
    Invalid,
}

impl Extent {
    pub(super) fn scan(&mut self, c: char) -> Scan {
        if !self.started {
            if c.is_whitespace() {
                return Scan::Skip;
            }
            self.started = true;
            match c {
                '{' | '[' => self.depth = 1,
                '"' => (self.in_string, self.string) = (true, true),
                '}' | ']' | ',' | ':' => return Scan::Invalid,
                _ => self.scalar = true,
            }
            return Scan::Take;
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
                if self.depth == 0 {
                    return Scan::Last;
                }
            }
            return Scan::Take;
        }
        if self.scalar {
            return if c.is_whitespace() || matches!(c, ',' | '}' | ']') {
                Scan::Ended
            } else {
                Scan::Take
            };
        }
        match c {
            '"' => self.in_string = true,
            '{' | '[' => self.depth += 1,
            '}' | ']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    return Scan::Last;
                }
            }
            _ => {}
        }
        Scan::Take
    }
}
