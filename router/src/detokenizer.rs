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

use crate::validation::StopInclusion;

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

/// Finds the first stop string in generated text, across token boundaries, and
/// decides what of the text may be emitted ([`StopInclusion`]).
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    longest: usize,
    inclusion: StopInclusion,
    text: String,
    /// Bytes of `text` already emitted; the rest is held back (exclusive mode only).
    emitted: usize,
}

/// What [`StopMatcher::push`] lets out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Text to emit now.
    pub text: String,
    /// A stop string matched: nothing follows.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>, inclusion: StopInclusion) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            longest: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            inclusion,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Add newly decoded text. With [`StopInclusion::Include`] (TGI's rule) all of it is
    /// emitted, up to the end of a stop string that now appears. With
    /// [`StopInclusion::Exclude`] (OpenAI's) the text ends before the stop string, and a
    /// tail that could still become one is held back until the next push (or
    /// [`StopMatcher::flush`]), so no stream ever shows part of a stop string.
    pub fn push(&mut self, delta: &str) -> Pushed {
        if self.stops.is_empty() {
            return Pushed { text: delta.to_string(), stopped: false };
        }
        let before = self.text.len();
        // A new match can start at most `longest - 1` bytes before the new text.
        let mut from = before.saturating_sub(self.longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(delta);
        let matches = self.stops.iter().filter_map(|s| {
            let start = from + self.text[from..].find(s.as_str())?;
            // Only matches that end in the new text are new (earlier ones were reported).
            (start + s.len() > before).then_some((start, start + s.len()))
        });
        let (end, stopped) = match self.inclusion {
            StopInclusion::Include => match matches.map(|(_, end)| end).min() {
                Some(end) => (end, true),
                None => (self.text.len(), false),
            },
            StopInclusion::Exclude => match matches.map(|(start, _)| start).min() {
                Some(start) => (start.max(self.emitted), true),
                None => (self.text.len() - self.held_tail(), false),
            },
        };
        let text = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Pushed { text, stopped }
    }

    /// The held-back text, once the generation ended without a stop string.
    pub fn flush(&mut self) -> String {
        let text = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        text
    }

    /// The longest tail of the text (not yet emitted) that is a proper prefix of a stop
    /// string.
    fn held_tail(&self) -> usize {
        let pending = &self.text[self.emitted..];
        let longest = pending.len().min(self.longest.saturating_sub(1));
        (1..=longest)
            .rev()
            .filter(|&k| pending.is_char_boundary(pending.len() - k))
            .find(|&k| {
                let tail = &pending[pending.len() - k..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(0)
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
        let mut m =
            StopMatcher::new(vec!["lazy dog".into(), "\n\n".into()], StopInclusion::Include);
        let emit = |text: &str, stopped| Pushed { text: text.into(), stopped };
        assert_eq!(m.push("the la"), emit("the la", false));
        assert_eq!(m.push("zy"), emit("zy", false));
        assert_eq!(m.push(" do"), emit(" do", false));
        assert_eq!(m.push("g and more"), emit("g", true));
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        let mut m = StopMatcher::new(vec!["日本".into(), "本語!".into()], StopInclusion::Include);
        assert!(!m.push("こんにちは日").stopped);
        assert_eq!(m.push("本語!").text, "本");
        let mut none = StopMatcher::new(vec![], StopInclusion::Exclude);
        assert_eq!(none.push("anything").text, "anything");
    }

    /// OpenAI's rule: the stop string is not part of the output, and a stream never
    /// shows a prefix of it, however the text is split.
    #[test]
    fn exclusive_stops_hold_back_possible_prefixes_at_every_split() {
        let text = "once the lazy dog slept, the lazy cat";
        for stop in ["lazy dog", "y d", "once", "cat", "日本", "never"] {
            let full = text.find(stop).map_or(text, |i| &text[..i]);
            for a in 0..=text.len() {
                for b in a..=text.len() {
                    let mut m = StopMatcher::new(vec![stop.into()], StopInclusion::Exclude);
                    let mut out = String::new();
                    let mut stopped = false;
                    for piece in [&text[..a], &text[a..b], &text[b..]] {
                        let p = m.push(piece);
                        out.push_str(&p.text);
                        assert!(!out.contains(stop), "{stop:?} shown at {a},{b}: {out:?}");
                        if p.stopped {
                            stopped = true;
                            break;
                        }
                    }
                    if !stopped {
                        out.push_str(&m.flush());
                    }
                    assert_eq!(out, full, "{stop:?} split at {a},{b}");
                    assert_eq!(stopped, text.contains(stop));
                }
            }
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Stream `generated` after `prompt` through a [`Detokenizer`]: the pieces it let
        /// out, and how many calls it held back.
        fn stream(tok: &Tokenizer, prompt: &[u32], generated: &[u32]) -> String {
            let mut ids = prompt.to_vec();
            let mut detok = Detokenizer::new(prompt.len(), true);
            let mut out = String::new();
            for &t in generated {
                ids.push(t);
                if let Some(delta) = detok.next(tok, &ids).unwrap() {
                    out.push_str(&delta);
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any token sequence (random bytes, broken UTF-8, special tokens) after
            /// any prompt: no panic, no error. After a prompt that decodes to whole
            /// characters, the streamed text is the generated tokens' full decode once
            /// that ends in a whole character. (After a prompt that ends mid-character,
            /// the first generated bytes may complete the prompt's character, and the
            /// stream then shows that character.)
            #[test]
            fn streamed_text_equals_the_full_decode(
                prompt in proptest::collection::vec(0u32..400, 0..8),
                generated in proptest::collection::vec(0u32..400, 1..40),
            ) {
                let tok = tokenizer();
                let out = stream(&tok, &prompt, &generated);
                let full = tok.decode(&generated, true).unwrap();
                let whole_prompt = !tok.decode(&prompt, true).unwrap().contains('\u{FFFD}');
                if whole_prompt && !full.ends_with('\u{FFFD}') {
                    prop_assert_eq!(&out, &full);
                }
            }

            /// Text pushed in arbitrary pieces: TGI's rule emits everything up to the end
            /// of the first stop string; OpenAI's everything before its start, and after
            /// `flush` all of it when none matched.
            #[test]
            fn stop_strings_are_found_however_the_text_is_split(
                text in "[ab😀 ]{0,40}",
                cuts in proptest::collection::vec(0usize..48, 0..12),
                stops in proptest::collection::vec("[ab😀]{1,3}", 0..3),
            ) {
                let mut pieces = Vec::new();
                let mut bounds: Vec<usize> =
                    cuts.into_iter().filter(|&c| c <= text.len() && text.is_char_boundary(c)).collect();
                bounds.extend([0, text.len()]);
                bounds.sort_unstable();
                bounds.dedup();
                for w in bounds.windows(2) {
                    pieces.push(&text[w[0]..w[1]]);
                }
                let first = stops
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| text.find(s.as_str()).map(|i| (i, i + s.len())))
                    .collect::<Vec<_>>();
                let include_end = first.iter().map(|&(_, e)| e).min();
                let exclude_start = first.iter().map(|&(s, _)| s).min();
                for inclusion in [StopInclusion::Include, StopInclusion::Exclude] {
                    let mut m = StopMatcher::new(stops.clone(), inclusion);
                    let mut out = String::new();
                    let mut stopped = false;
                    for piece in &pieces {
                        let p = m.push(piece);
                        out.push_str(&p.text);
                        if p.stopped {
                            stopped = true;
                            break;
                        }
                    }
                    if !stopped {
                        out.push_str(&m.flush());
                    }
                    let want = match inclusion {
                        StopInclusion::Include => &text[..include_end.unwrap_or(text.len())],
                        StopInclusion::Exclude => &text[..exclude_start.unwrap_or(text.len())],
                    };
                    prop_assert_eq!(stopped, include_end.is_some());
                    prop_assert_eq!(out.as_str(), want, "{:?} {:?}", inclusion, pieces);
                }
            }
        }
    }
}
