//! The minijinja environment, configured like transformers' Jinja sandbox.
//!
//! transformers (`utils/chat_template_utils.py`, `_compile_jinja_template`) renders with an
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` plus the
//! `loopcontrols` extension, a `{% generation %}` tag, the globals `raise_exception` and
//! `strftime_now`, and a `tojson` filter that is Python's `json.dumps`. [`environment`] builds
//! the same: Jinja2's whitespace rules (no trailing newline kept), lenient undefined values
//! (printing one gives nothing, reading an attribute of one fails), Python's string/list/dict
//! methods from minijinja-contrib, no auto-escaping, floats printed as Python prints them,
//! and limits for hostile templates (fuel, recursion, output size: see [`Limits`]).
//! [`rewrite_generation_tags`] turns the tag minijinja lacks into a scope block.

use std::fmt::Write as _;
use std::io;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Rest, Value, ValueKind, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use super::pyjson::{self, DumpOptions};

/// Bounds on one render, so that a hostile template fails fast instead of hanging or
/// exhausting memory. Real templates stay far below them: each parity rendering needs under
/// 50,000 fuel, a 1,000-message, 4 MB conversation through gpt-oss or Qwen3 under a million.
/// Fuel also pays for the bytes a render creates (64 per fuel), so 5 million caps a render's
/// allocations near 320 MB and its time near a second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// minijinja fuel: one per instruction plus a charge per byte produced (1/64 fuel).
    pub fuel: u64,
    /// minijinja's recursion depth budget (a macro call costs several levels).
    pub recursion: usize,
    /// The largest prompt a template may render.
    pub max_output_bytes: usize,
}

pub(crate) const LIMITS: Limits =
    Limits { fuel: 5_000_000, recursion: 200, max_output_bytes: 8 << 20 };

/// The local clock `strftime_now` reads; tests pin it.
pub(crate) type Clock = fn() -> chrono::NaiveDateTime;

pub(crate) fn system_clock() -> chrono::NaiveDateTime {
    chrono::Local::now().naive_local()
}

/// The error a template's own `raise_exception(message)` fails with; found again through
/// [`Error::source`] so that the message reaches the client verbatim.
#[derive(Debug)]
pub(crate) struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A fresh environment with transformers' configuration and no templates yet.
pub(crate) fn environment(clock: Clock) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            // The default delimiters with whitespace flags always build.
            .expect("default syntax is valid"),
    );
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_fuel(Some(LIMITS.fuel));
    env.set_recursion_limit(LIMITS.recursion);
    env.set_formatter(|out, state, value| {
        // Python prints floats as repr() does (`1e+100`, not 1 followed by 100 digits).
        if value.is_number()
            && !value.is_integer()
            && let Ok(f) = f64::try_from(value.clone())
            && f.is_finite()
        {
            return out
                .write_str(&pyjson::float_repr(f))
                .map_err(|_| Error::from(ErrorKind::WriteFailure));
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", move |format: &str| strftime(clock(), format));
    env
}

fn tojson(state: &State, value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let opts = DumpOptions {
        max_len: LIMITS.max_output_bytes,
        ..DumpOptions::from_args(&args.into_values())?
    };
    let mut out = String::new();
    pyjson::dumps(value, &opts, &mut out)?;
    // minijinja charges its own serializers per byte produced; do the same.
    state.consume_fuel(out.len() as u64 / 4)?;
    Ok(Value::from(out))
}

fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = match message.kind() {
        ValueKind::String => message.as_str().unwrap_or_default().to_owned(),
        _ => message.to_string(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `datetime.now().strftime(format)`; chrono's specifiers are C's (plus `%-d` and friends,
/// as glibc has them). A format chrono cannot read fails instead of printing garbage.
fn strftime(now: chrono::NaiveDateTime, format: &str) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.contains(&Item::Error) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        ));
    }
    let mut out = String::new();
    write!(out, "{}", now.format_with_items(items.into_iter())).map_err(|_| {
        Error::new(ErrorKind::InvalidOperation, format!("strftime_now: cannot format {format:?}"))
    })?;
    Ok(out)
}

/// `{% generation %}…{% endgeneration %}` (transformers' tag marking assistant text) becomes
/// `{% with %}…{% endwith %}`: the body renders unchanged, in its own scope as in Jinja2 (where
/// it is a call block), and the tag keeps its `-`/`+` whitespace markers, so `trim_blocks`,
/// `lstrip_blocks` and `{%- … -%}` trim exactly as they would around the original tag.
pub(crate) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match parse_simple_tag(tag) {
            Some((len, left, name, right)) if name == "generation" || name == "endgeneration" => {
                let replacement = if name == "generation" { "with" } else { "endwith" };
                out.push_str(&format!("{{%{left} {replacement} {right}%}}"));
                rest = &tag[len..];
            }
            _ => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads `{%[-+]? name [-+]?%}` at the start of `s`: (length, left marker, name, right marker).
fn parse_simple_tag(s: &str) -> Option<(usize, &str, &str, &str)> {
    let body = s.strip_prefix("{%")?;
    let left = if body.starts_with(['-', '+']) { &body[..1] } else { "" };
    let after_left = body[left.len()..].trim_start();
    let name_len = after_left
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after_left.len());
    let name = &after_left[..name_len];
    let after_name = after_left[name_len..].trim_start();
    let right = if after_name.starts_with(['-', '+']) { &after_name[..1] } else { "" };
    let after_right = after_name[right.len()..].strip_prefix("%}")?;
    if name.is_empty() {
        return None;
    }
    Some((s.len() - after_right.len(), left, name, right))
}

/// An `io::Write` into memory that fails once more than `limit` bytes were written, so a
/// template's output is cut off while it renders rather than after.
#[derive(Debug)]
pub(crate) struct BoundedWriter {
    pub buf: Vec<u8>,
    pub limit: usize,
    pub overflowed: bool,
}

impl BoundedWriter {
    pub fn new(limit: usize) -> BoundedWriter {
        BoundedWriter { buf: Vec::new(), limit, overflowed: false }
    }
}

impl io::Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
