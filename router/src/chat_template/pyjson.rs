//! Python's `json.dumps` over template values: the `tojson` filter that chat templates expect.
//!
//! transformers replaces Jinja's `tojson` (compact, HTML-escaping) with
//! `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`,
//! and templates print tool schemas and tool-call arguments through it, so its exact bytes
//! end up in prompts: `", "` and `": "` separators, non-ASCII kept, `1.0` not `1`, Python's
//! float notation (`1e+100`), key order as given. [`DumpOptions::from_args`] reads the filter's
//! arguments the way Python binds them; [`dumps`] writes the text; [`float_repr`] is Python's
//! `repr(float)`, also used to print floats.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Deeper values are refused rather than recursed into (Python's own limit is ~1000 frames).
const MAX_DEPTH: usize = 256;

/// The widest indent accepted, in spaces or bytes (real templates use 2, 4 or a tab).
const MAX_INDENT: i64 = 256;

/// `json.dumps`' formatting arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: one line. `Some(unit)`: a newline and `unit` repeated per level before each item.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
    /// Not Python's: serializing stops with an error once the text is longer than this.
    pub max_len: usize,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
            max_len: usize::MAX,
        }
    }
}

impl DumpOptions {
    /// Binds `tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`'s
    /// arguments: positional in that order, then keywords (the last argument when it is a
    /// keyword map).
    pub fn from_args(args: &[Value]) -> Result<DumpOptions, Error> {
        const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
        let mut bound: [Option<Value>; 4] = Default::default();
        for (i, arg) in args.iter().enumerate() {
            if arg.is_kwargs() {
                if i + 1 != args.len() {
                    return Err(invalid("tojson: keyword arguments must come last"));
                }
                for key in arg.try_iter()? {
                    let name = key.as_str().unwrap_or_default();
                    let slot = NAMES.iter().position(|n| *n == name).ok_or_else(|| {
                        invalid(format!("tojson() got an unexpected keyword argument '{name}'"))
                    })?;
                    if bound[slot].is_some() {
                        return Err(invalid(format!(
                            "tojson() got multiple values for argument '{name}'"
                        )));
                    }
                    bound[slot] = Some(arg.get_item(&key)?);
                }
            } else if i < NAMES.len() {
                bound[i] = Some(arg.clone());
            } else {
                return Err(invalid("tojson() takes at most 4 arguments after the value"));
            }
        }
        let [ensure_ascii, indent, separators, sort_keys] = bound;
        let mut opts = DumpOptions {
            ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
            sort_keys: sort_keys.is_some_and(|v| v.is_true()),
            ..DumpOptions::default()
        };
        match indent {
            None => {}
            Some(v) if v.is_none() || v.is_undefined() => {}
            Some(v) if v.kind() == ValueKind::String => {
                let unit = v.to_string();
                if unit.len() > MAX_INDENT as usize {
                    return Err(invalid("tojson: indent is too long"));
                }
                opts.indent = Some(unit)
            }
            // json.dumps: an integer indent is that many spaces (none when negative). Capped, so
            // that `indent=10**9` cannot allocate gigabytes before fuel is charged.
            Some(v) => match i64::try_from(v.clone()) {
                Ok(n) => {
                    let spaces = usize::try_from(n.clamp(0, MAX_INDENT)).unwrap_or(0);
                    opts.indent = Some(" ".repeat(spaces))
                }
                Err(_) => {
                    return Err(invalid(format!(
                        "tojson: indent must be an integer or a string, not {}",
                        v.kind()
                    )));
                }
            },
        }
        if opts.indent.is_some() {
            // With an indent, items end their lines: Python drops the space after the comma.
            opts.item_separator = ",".into();
        }
        match separators {
            None => {}
            Some(v) if v.is_none() || v.is_undefined() => {}
            Some(v) => {
                let parts: Vec<Value> = v
                    .try_iter()
                    .map_err(|_| invalid("tojson: separators must be a pair of strings"))?
                    .collect();
                match parts.as_slice() {
                    [item, key]
                        if item.kind() == ValueKind::String && key.kind() == ValueKind::String =>
                    {
                        opts.item_separator = item.to_string();
                        opts.key_separator = key.to_string();
                    }
                    _ => return Err(invalid("tojson: separators must be a pair of strings")),
                }
            }
        }
        Ok(opts)
    }
}

/// Appends `json.dumps(value, **opts)` to `out`.
pub(crate) fn dumps(value: &Value, opts: &DumpOptions, out: &mut String) -> Result<(), Error> {
    write_value(value, opts, 0, out)
}

fn write_value(
    value: &Value,
    opts: &DumpOptions,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(invalid("tojson: value nested too deeply"));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(value, out),
        ValueKind::String => {
            write_string(value.as_str().unwrap_or_default(), opts.ensure_ascii, out)
        }
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, opts, depth, '[', ']', items.len(), |i, out| {
                write_value(&items[i], opts, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if opts.sort_keys {
                sort_keys(&mut keys)?;
            }
            write_container(out, opts, depth, '{', '}', keys.len(), |i, out| {
                write_key(&keys[i], opts, out)?;
                out.push_str(&opts.key_separator);
                write_value(&value.get_item(&keys[i])?, opts, depth + 1, out)
            })?;
        }
        kind => return Err(invalid(format!("Object of type {kind} is not JSON serializable"))),
    }
    Ok(())
}

/// Writes `open items close` with Python's separators and indentation; `item(i)` writes one.
fn write_container(
    out: &mut String,
    opts: &DumpOptions,
    depth: usize,
    open: char,
    close: char,
    len: usize,
    mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len > 0 {
        let newline = |out: &mut String, level: usize| {
            if let Some(unit) = &opts.indent {
                out.push('\n');
                for _ in 0..level {
                    out.push_str(unit);
                }
            }
        };
        for i in 0..len {
            if out.len() > opts.max_len {
                return Err(invalid("tojson: the JSON text is too large"));
            }
            if i > 0 {
                out.push_str(&opts.item_separator);
            }
            newline(out, depth + 1);
            item(i, out)?;
        }
        newline(out, depth);
    }
    out.push(close);
    if out.len() > opts.max_len {
        return Err(invalid("tojson: the JSON text is too large"));
    }
    Ok(())
}

/// Python turns str, int, float, bool and None keys into strings, and refuses the rest.
fn write_key(key: &Value, opts: &DumpOptions, out: &mut String) -> Result<(), Error> {
    match key.kind() {
        ValueKind::String => write_string(key.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Number | ValueKind::Bool | ValueKind::None => {
            let mut text = String::new();
            write_value(key, opts, 0, &mut text)?;
            write_string(&text, opts.ensure_ascii, out);
        }
        kind => {
            return Err(invalid(format!("keys must be str, int, float, bool or None, not {kind}")));
        }
    }
    Ok(())
}

/// `sorted(d.items())`: strings by code point (UTF-8 byte order is the same), numbers by value;
/// Python cannot order a mix.
fn sort_keys(keys: &mut [Value]) -> Result<(), Error> {
    if keys.iter().all(|k| k.kind() == ValueKind::String) {
        keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    } else if keys.iter().all(|k| matches!(k.kind(), ValueKind::Number | ValueKind::Bool)) {
        keys.sort();
    } else {
        return Err(invalid("'<' not supported between the dict's key types (sort_keys)"));
    }
    Ok(())
}

fn write_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        out.push_str(&value.to_string());
    } else {
        let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
        if f.is_nan() {
            out.push_str("NaN");
        } else if f.is_infinite() {
            out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            out.push_str(&float_repr(f));
        }
    }
}

/// json's string encoders: `encode_basestring` (only `"`, `\` and control characters are
/// escaped) or, with `ensure_ascii`, `encode_basestring_ascii` (everything outside
/// printable ASCII becomes `\uXXXX`, astral characters as surrogate pairs).
fn write_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` for a finite float: the shortest digits that round-trip, in
/// positional notation when the decimal exponent is in -4..16 (always with a fractional
/// part, `1.0`), else scientific with a signed, at least two-digit exponent (`1e+16`, `2.5e-07`).
pub(crate) fn float_repr(f: f64) -> String {
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7", "1e16".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else {
            let point = point as usize;
            if digits.len() <= point {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            } else {
                format!("{}.{}", &digits[..point], &digits[point..])
            }
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.unsigned_abs())
    }
}

fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}
