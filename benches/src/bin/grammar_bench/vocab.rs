//! The synthetic 128k vocabulary (see the binary's documentation for its recipe).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Rng;

pub struct Vocab {
    pub tokens: Vec<Vec<u8>>,
    /// Tokens per source: bytes, JSON/digits/whitespace, repository pieces, generated.
    pub counts: [usize; 4],
    pub files: usize,
}

impl Vocab {
    pub fn build(size: usize, repo: &Path) -> Result<Self> {
        let mut v =
            Builder { tokens: Vec::with_capacity(size), seen: HashSet::new(), cap: size - 1 };
        let mut counts = [0; 4];

        for b in 0..=255u8 {
            v.add(&[b]);
        }
        counts[0] = v.tokens.len();

        let json_fragments = [
            "\":", "\": ", "{\"", "{ \"", "},", "}, ", "\",", "\", ", ",\"", ", \"", "\"}", "\" }",
            "}]", "}}", "]}", "[{", "[\"", "\"]", "\"],", "\":\"", "\": \"", "\":{", "\": {",
            "\":[", "\": [", "\":{\"", "\": {\"", "},{", "}, {", "\"},", "\"}]", "null", "true",
            "false", " null", " true", " false", "\\n", "\\\"", "\\u", "[]", "{}", "\"\"",
        ];
        for f in json_fragments {
            v.add(f.as_bytes());
        }
        for n in 0..1000 {
            for form in [format!("{n}"), format!(" {n}")] {
                v.add(form.as_bytes());
            }
            if n < 100 {
                v.add(format!("{n:02}").as_bytes());
            }
            if n < 10 {
                v.add(format!("00{n}").as_bytes());
            }
        }
        for newlines in 0..=2 {
            for spaces in 0..=16 {
                let run = "\n".repeat(newlines) + &" ".repeat(spaces);
                if run.len() >= 2 {
                    v.add(run.as_bytes());
                }
            }
        }
        counts[1] = v.tokens.len() - counts[0];

        let (pieces, files) = repository_pieces(repo)?;
        for p in &pieces {
            if v.full() {
                break;
            }
            v.add(p);
        }
        counts[2] = v.tokens.len() - counts[0] - counts[1];

        let mut rng = Rng::new(0x5EED);
        let onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t"];
        let more = ["v", "w", "z", "ch", "sh", "th", "st", "tr", "pl", "gr", "br", "qu", ""];
        let vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"];
        let codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m"];
        let mut attempts = 0u64;
        while !v.full() {
            attempts += 1;
            if attempts > 100 * size as u64 {
                bail!("could not generate {size} distinct tokens");
            }
            let mut word = String::new();
            for _ in 0..1 + rng.below(4) {
                let onset = if rng.below(3) == 0 {
                    more[rng.below(more.len())]
                } else {
                    onsets[rng.below(onsets.len())]
                };
                word.push_str(onset);
                word.push_str(vowels[rng.below(vowels.len())]);
                word.push_str(codas[rng.below(codas.len())]);
            }
            let capital = word[..1].to_uppercase() + &word[1..];
            for form in [format!(" {word}"), word.clone(), format!(" {capital}"), capital] {
                if !v.full() && form.len() <= 16 {
                    v.add(form.as_bytes());
                }
            }
        }
        counts[3] = v.tokens.len() - counts[0] - counts[1] - counts[2];
        // EOS: never text (the compiler marks it special whatever its bytes).
        v.tokens.push(b"<|eot_id|>".to_vec());
        Ok(Vocab { tokens: v.tokens, counts, files })
    }

    pub fn mean_len(&self) -> f64 {
        self.tokens.iter().map(Vec::len).sum::<usize>() as f64 / self.tokens.len() as f64
    }
}

struct Builder {
    tokens: Vec<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
    cap: usize,
}

impl Builder {
    fn add(&mut self, bytes: &[u8]) {
        if !self.full() && self.seen.insert(bytes.to_vec()) {
            self.tokens.push(bytes.to_vec());
        }
    }

    fn full(&self) -> bool {
        self.tokens.len() >= self.cap
    }
}

/// Pre-tokenized pieces of the repository's text (2–16 bytes), with their prefixes and
/// suffixes, most frequent first (ties by bytes, so the order is deterministic).
fn repository_pieces(repo: &Path) -> Result<(Vec<Vec<u8>>, usize)> {
    let mut files = Vec::new();
    collect_files(repo, &mut files)?;
    files.sort();
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for piece in split_pieces(&text) {
            let b = piece.as_bytes();
            // The whole piece counts most; its prefixes and suffixes stand in for the
            // sub-word pieces a BPE vocabulary also has.
            if (2..=16).contains(&b.len()) {
                *counts.entry(b.to_vec()).or_default() += 4;
            }
            for end in (2..b.len().min(17)).filter(|&e| piece.is_char_boundary(e)) {
                *counts.entry(b[..end].to_vec()).or_default() += 1;
            }
            for start in (1..b.len().saturating_sub(1)).filter(|&s| piece.is_char_boundary(s)) {
                if b.len() - start <= 16 {
                    *counts.entry(b[start..].to_vec()).or_default() += 1;
                }
            }
        }
    }
    let mut ranked: Vec<(Vec<u8>, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok((ranked.into_iter().map(|(p, _)| p).collect(), files.len()))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || matches!(name, "target" | "fixtures" | "models") {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("md" | "rs" | "toml" | "py" | "sh")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// GPT-style pieces: an optional leading space, then a run of letters, of at most three
/// digits, or of other non-space characters; whitespace runs on their own.
fn split_pieces(text: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Digit,
        Space,
        Other,
    }
    let class = |c: char| {
        if c.is_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Digit
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = chars[i].0;
        let mut j = i;
        // A single space joins the word after it.
        if chars[j].1 == ' ' && j + 1 < chars.len() && class(chars[j + 1].1) != Class::Space {
            j += 1;
        }
        let c = class(chars[j].1);
        let mut run = 0;
        while j < chars.len() && class(chars[j].1) == c && !(c == Class::Digit && run == 3) {
            j += 1;
            run += 1;
        }
        let end = chars.get(j).map_or(text.len(), |&(o, _)| o);
        out.push(&text[start..end]);
        i = j;
    }
    out
}
