//! The grammar's view of a vocabulary: every token as the bytes it decodes to, in a
//! [`TokTrie`], and a [`TokenizerEnv`] that tokenizes forced text the way the model's
//! tokenizer would.
//!
//! [`token_bytes`] reads `tokenizer.json` (byte-level BPE: GPT-2's byte→char map;
//! sentencepiece style: `▁` for a space and `<0xNN>` byte-fallback pieces).
//! [`HfTokEnv`] wraps our `tokenizers` 0.23 tokenizer; [`GreedyTokEnv`] tokenizes
//! greedily over the trie for synthetic vocabularies. Both re-implement what
//! `toktrie_hf_tokenizers` does (it pins `tokenizers` 0.21), returning errors where it
//! panics.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, Tokenizer, normalizers, pre_tokenizers};
use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// Token ids above this are refused: the trie packs ids in 24 bits and subtree sizes in
/// 22, so a corrupt `tokenizer.json` would otherwise trip its assertions.
const MAX_VOCAB: usize = 1 << 21;
/// Total token bytes above this are refused, for the same reason (trie nodes ≤ bytes).
const MAX_TOTAL_BYTES: usize = 1 << 21;
/// The trie walks back at most 1024 levels; longer tokens are left out (never allowed).
const MAX_TOKEN_LEN: usize = 1000;

/// Bytes of every token id in `tokenizer.json`; ids without a token get no bytes (never
/// allowed). Added tokens marked special, or shaped `<|...|>` (control tokens some
/// tokenizers forget to mark), get toktrie's 0xFF marker so a grammar never produces them
/// as text. Other added tokens are text, as the tokenizer decodes them: Qwen's
/// `<tool_call>` and `<think>`-style tags (not special) are what the model writes
/// where the text `<tool_call>` belongs, so a grammar that allows that text must allow
/// the token. `toktrie_hf_tokenizers` marks every `<...>` token, which masked them out.
pub(super) fn token_bytes(json: &Value) -> Result<Vec<Vec<u8>>, String> {
    let mut kind = DecoderKind::default();
    kind.scan(&json["decoder"]);
    if json["model"]["byte_fallback"].as_bool() == Some(true) {
        kind.byte_fallback = true;
    }
    let sentencepiece = kind.byte_fallback || kind.metaspace;
    if !kind.byte_level && !sentencepiece {
        return Err(format!(
            "cannot tell how tokens map to bytes: decoder {} is neither byte-level nor \
             sentencepiece-style (byte fallback / metaspace)",
            json["decoder"]["type"]
        ));
    }

    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut set = |id: usize, bytes: Vec<u8>| -> Result<(), String> {
        if id >= MAX_VOCAB {
            return Err(format!("token id {id} is too large (at most {MAX_VOCAB} tokens)"));
        }
        if tokens.len() <= id {
            tokens.resize(id + 1, Vec::new());
        }
        tokens[id] = bytes;
        Ok(())
    };

    let mut added = std::collections::HashSet::new();
    for tok in json["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(id), Some(content)) = (tok["id"].as_u64(), tok["content"].as_str()) else {
            return Err(format!("added token without id/content: {tok}"));
        };
        let id = usize::try_from(id).unwrap_or(usize::MAX);
        let special = tok["special"].as_bool().unwrap_or(false)
            || (content.starts_with("<|") && content.ends_with("|>"));
        let mut bytes = Vec::with_capacity(content.len() + 1);
        if special {
            bytes.push(TokTrie::SPECIAL_TOKEN_MARKER);
        }
        bytes.extend_from_slice(content.as_bytes());
        set(id, bytes)?;
        added.insert(id);
    }

    let byte_of_char = byte_level_char_map();
    let piece_bytes = |piece: &str| -> Option<Vec<u8>> {
        if kind.byte_level {
            piece.chars().map(|c| byte_of_char.get(&c).copied()).collect()
        } else if let Some(byte) = byte_fallback_piece(piece).filter(|_| kind.byte_fallback) {
            Some(vec![byte])
        } else {
            Some(piece.replace(kind.space_char, " ").into_bytes())
        }
    };
    let mut add_piece = |piece: &str, id: u64| -> Result<(), String> {
        let id = usize::try_from(id).unwrap_or(usize::MAX);
        if added.contains(&id) {
            return Ok(());
        }
        // A piece outside the byte-level alphabet cannot be produced as text: left empty.
        let bytes = piece_bytes(piece).unwrap_or_default();
        set(id, bytes)
    };
    match &json["model"]["vocab"] {
        // BPE / WordPiece: piece → id.
        Value::Object(vocab) => {
            for (piece, id) in vocab {
                let id = id.as_u64().ok_or_else(|| format!("vocab entry {piece:?}: bad id"))?;
                add_piece(piece, id)?;
            }
        }
        // Unigram: [piece, score] at index id.
        Value::Array(vocab) => {
            for (id, entry) in vocab.iter().enumerate() {
                let piece = entry[0].as_str().ok_or_else(|| format!("vocab entry {id}: bad"))?;
                add_piece(piece, id as u64)?;
            }
        }
        _ => return Err("tokenizer.json has no model.vocab".to_string()),
    }

    let total: usize = tokens.iter().map(Vec::len).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(format!("vocabulary has {total} bytes of tokens (at most {MAX_TOTAL_BYTES})"));
    }
    Ok(tokens)
}

/// What the decoder says about pieces; decoders nest in `Sequence`s.
struct DecoderKind {
    byte_level: bool,
    byte_fallback: bool,
    metaspace: bool,
    space_char: char,
}

impl Default for DecoderKind {
    fn default() -> Self {
        DecoderKind { byte_level: false, byte_fallback: false, metaspace: false, space_char: '▁' }
    }
}

impl DecoderKind {
    fn scan(&mut self, decoder: &Value) {
        match decoder["type"].as_str() {
            Some("ByteLevel") => self.byte_level = true,
            Some("ByteFallback") => self.byte_fallback = true,
            Some("Metaspace") => {
                self.metaspace = true;
                if let Some(c) = single_char(&decoder["replacement"]) {
                    self.space_char = c;
                }
            }
            Some("Replace") if decoder["content"].as_str() == Some(" ") => {
                if let Some(c) = single_char(&decoder["pattern"]["String"]) {
                    self.space_char = c;
                }
            }
            Some("Sequence") => {
                for d in decoder["decoders"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    self.scan(d);
                }
            }
            _ => {}
        }
    }
}

fn single_char(v: &Value) -> Option<char> {
    let mut chars = v.as_str()?.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// `<0xNN>` → the byte NN.
fn byte_fallback_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte-level alphabet inverted: printable bytes stand for themselves, the
/// others for U+0100 onwards in byte order.
fn byte_level_char_map() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(char::from(b), b);
        } else {
            // `next` stays below 0x200: 256 bytes at most, all valid scalar values.
            map.insert(char::from_u32(next).unwrap_or('\u{FFFD}'), b);
            next += 1;
        }
    }
    map
}

/// The trie over `tokens` with every id in `eos` accepted as EOS. Tokens are sanitised
/// first so that toktrie's construction cannot assert: over-long tokens dropped, EOS ids
/// past the end appended, an EOS without bytes given a special placeholder.
pub(super) fn build_trie(mut tokens: Vec<Vec<u8>>, eos: &[TokenId]) -> Result<TokTrie, String> {
    let Some(&first_eos) = eos.first() else {
        return Err("no EOS token id".to_string());
    };
    if tokens.len() > MAX_VOCAB || eos.iter().any(|&e| e as usize >= MAX_VOCAB) {
        return Err(format!("vocabulary too large (at most {MAX_VOCAB} tokens)"));
    }
    let total: usize = tokens.iter().map(Vec::len).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(format!("vocabulary has {total} bytes of tokens (at most {MAX_TOTAL_BYTES})"));
    }
    for t in &mut tokens {
        if t.len() > MAX_TOKEN_LEN {
            t.clear();
        }
    }
    for &e in eos {
        let e = e as usize;
        if tokens.len() <= e {
            tokens.resize(e + 1, Vec::new());
        }
        if tokens[e].first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
            // EOS is never text: give it a name no grammar can spell.
            let mut name = format!(".<[{e}]>").into_bytes();
            name[0] = TokTrie::SPECIAL_TOKEN_MARKER;
            tokens[e] = name;
        }
    }
    let info = TokRxInfo::new(tokens.len() as u32, first_eos);
    Ok(TokTrie::from(&info, &tokens).with_eos_tokens(eos))
}

/// Tokenizes forced text with the model's tokenizer, so forced tokens are the ones the
/// model would have produced itself.
pub(super) struct HfTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl HfTokEnv {
    pub(super) fn new(trie: TokTrie, tokenizer: Arc<Tokenizer>) -> Self {
        HfTokEnv { trie, tokenizer: without_prefix_space(tokenizer) }
    }

    fn encode(&self, text: &str) -> Vec<TokenId> {
        let ids = match self.tokenizer.encode(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => return self.trie.greedy_tokenize(text.as_bytes()),
        };
        // Forced tokens must spell exactly the forced bytes; a normalizer that rewrites
        // text (NFC, lowercase, an unremoved prefix space) would desynchronise the parser.
        if ids.iter().all(|&t| (t as usize) < self.trie.vocab_size())
            && self.trie.decode_raw(&ids) == text.as_bytes()
        {
            ids
        } else {
            self.trie.greedy_tokenize(text.as_bytes())
        }
    }
}

impl TokenizerEnv for HfTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| self.encode(s))
    }

    fn tokenize_bytes_special(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.trie.tokenize_with_special(s, |s| self.encode(s))
        })
    }
}

/// Greedy longest-match over the trie: the tokenizer of a synthetic vocabulary. It is
/// deterministic, so it counts as canonical and forced tokens come from it.
pub(super) struct GreedyTokEnv {
    pub(super) trie: TokTrie,
}

impl TokenizerEnv for GreedyTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

/// The tokenizer with the rules that put a space before the first word removed:
/// forced text is a continuation, never the start of a prompt. `Prepend` normalizers
/// go, Metaspace stops prepending, byte-level stops adding a prefix space. The original
/// is kept (not copied) when nothing needs changing.
fn without_prefix_space(tokenizer: Arc<Tokenizer>) -> Arc<Tokenizer> {
    let mut changed = false;
    let normalizer = tokenizer.get_normalizer().map(|n| strip_prepend(n.clone(), &mut changed));
    let pre = tokenizer.get_pre_tokenizer().map(|p| no_prefix_space(p.clone(), &mut changed));
    if !changed {
        return tokenizer;
    }
    let mut fixed = (*tokenizer).clone();
    if let Some(normalizer) = normalizer
        && fixed.with_normalizer(normalizer).is_err()
    {
        // Keep the original: `encode` falls back to greedy where it adds a space.
        return tokenizer;
    }
    if let Some(pre) = pre {
        fixed.with_pre_tokenizer(Some(pre));
    }
    Arc::new(fixed)
}

fn strip_prepend(n: NormalizerWrapper, changed: &mut bool) -> Option<NormalizerWrapper> {
    match n {
        NormalizerWrapper::Prepend(_) => {
            *changed = true;
            None
        }
        NormalizerWrapper::Sequence(seq) => {
            let kept: Vec<_> =
                seq.as_ref().iter().filter_map(|n| strip_prepend(n.clone(), changed)).collect();
            (!kept.is_empty())
                .then(|| NormalizerWrapper::Sequence(normalizers::Sequence::new(kept)))
        }
        n => Some(n),
    }
}

fn no_prefix_space(p: PreTokenizerWrapper, changed: &mut bool) -> PreTokenizerWrapper {
    match p {
        PreTokenizerWrapper::Metaspace(mut m) if m.prepend_scheme != PrependScheme::Never => {
            m.prepend_scheme = PrependScheme::Never;
            *changed = true;
            PreTokenizerWrapper::Metaspace(m)
        }
        PreTokenizerWrapper::ByteLevel(mut b) if b.add_prefix_space => {
            b.add_prefix_space = false;
            *changed = true;
            PreTokenizerWrapper::ByteLevel(b)
        }
        PreTokenizerWrapper::Sequence(seq) => {
            let inner = seq.as_ref().iter().map(|p| no_prefix_space(p.clone(), changed)).collect();
            PreTokenizerWrapper::Sequence(pre_tokenizers::sequence::Sequence::new(inner))
        }
        p => p,
    }
}
