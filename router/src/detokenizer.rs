//! Incremental detokenization that never emits broken UTF-8, and stop strings
//! matched on the text (so a stop string spanning several tokens is still found).
//!
//! [`Detokenizer`] follows TGI's prefix/read offsets: it decodes a short window of
//! already-emitted tokens with and without the new ones and emits the difference,
//! holding it back while the window ends in an incomplete character (U+FFFD from
//! a partial byte sequence). Decoding a window instead of one token keeps
//! tokenizer-specific spacing (SentencePiece's leading "▁", byte-level merges)
//! right. [`StopMatcher`] watches the emitted text for stop strings.

use tokenizers::Tokenizer;

/// Tokens of context kept before the first new token.
const CONTEXT: usize = 5;

#[derive(Clone, Debug)]
pub struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl Detokenizer {
    /// For a sequence whose first `prompt_len` tokens were the prompt.
    pub fn new(prompt_len: usize, skip_special_tokens: bool) -> Self {
        Detokenizer {
            prefix_offset: prompt_len.saturating_sub(CONTEXT),
            read_offset: prompt_len,
            skip_special_tokens,
        }
    }

    /// The text `ids` (prompt + generated so far) adds since the last call, or
    /// `None` while it ends in an incomplete character.
    pub fn next(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<Option<String>, String> {
        let decode = |ids: &[u32]| {
            tokenizer.decode(ids, self.skip_special_tokens).map_err(|e| e.to_string())
        };
        let prefix = decode(&ids[self.prefix_offset..self.read_offset])?;
        let full = decode(&ids[self.prefix_offset..])?;
        if full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        // Normally `full` extends `prefix`; if the tokenizer rewrote the window's
        // start, fall back to the part after the common prefix.
        let split = if full.starts_with(&prefix) {
            prefix.len()
        } else {
            common_prefix_len(&prefix, &full)
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = ids.len();
        Ok(Some(full[split..].to_string()))
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .map(|((i, x), _)| i + x.len_utf8())
        .last()
        .unwrap_or(0)
}

/// Finds the first stop string in generated text, across token boundaries.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    longest: usize,
    text: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            longest: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            text: String::new(),
        }
    }

    /// Add newly emitted text. When a stop string now appears, returns how many
    /// bytes of `delta` to keep: the text ends right after the stop string, as TGI's
    /// `generated_text` does.
    pub fn push(&mut self, delta: &str) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let before = self.text.len();
        // A match can start at most `longest - 1` bytes before the new text.
        let mut from = before.saturating_sub(self.longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(delta);
        let end = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i + s.len()))
            .min()?;
        // Only matches that end in the new text are new (earlier ones were reported).
        (end > before).then(|| end - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../integration-tests/fixtures/models/llama/tokenizer.json"
        );
        Tokenizer::from_file(path).unwrap()
    }

    #[test]
    fn streamed_text_reassembles_exactly_and_never_splits_a_character() {
        let tok = tokenizer();
        let text = "Café 日本語 and 😀🚀 over the lazy dog.";
        let prompt = tok.encode("Hello", true).unwrap().get_ids().to_vec();
        let generated = tok.encode(text, false).unwrap().get_ids().to_vec();
        let mut ids = prompt.clone();
        let mut detok = Detokenizer::new(prompt.len(), true);
        let mut out = String::new();
        let mut held = 0;
        for &t in &generated {
            ids.push(t);
            match detok.next(&tok, &ids).unwrap() {
                Some(delta) => {
                    assert!(!delta.contains('\u{FFFD}'), "{delta:?}");
                    out.push_str(&delta);
                }
                None => held += 1,
            }
        }
        assert_eq!(out, text);
        assert!(held > 0, "multi-byte characters span tokens in this tokenizer");
    }

    #[test]
    fn stop_string_spanning_tokens_is_found_and_cut_after() {
        let mut m = StopMatcher::new(vec!["lazy dog".into(), "\n\n".into()]);
        assert_eq!(m.push("the la"), None);
        assert_eq!(m.push("zy"), None);
        assert_eq!(m.push(" do"), None);
        assert_eq!(m.push("g and more"), Some(1));
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        let mut m = StopMatcher::new(vec!["日本".into(), "本語!".into()]);
        assert_eq!(m.push("こんにちは日"), None);
        assert_eq!(m.push("本語!"), Some(3));
        let mut none = StopMatcher::new(vec![]);
        assert_eq!(none.push("anything"), None);
    }
}
