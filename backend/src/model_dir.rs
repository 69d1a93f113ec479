//! A Hugging Face model directory: `config.json`, `generation_config.json`,
//! `tokenizer.json`, `tokenizer_config.json` (+ `chat_template.jinja`), and the
//! safetensors weights (opened separately, see [`crate::weights`]).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::{ModelConfig, read_json, token_id_list};
use crate::error::LoadError;

/// What `tokenizer_config.json` says that serving needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// Kept for the chat routes (a later issue renders it).
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer_config.json");
        let mut cfg = TokenizerConfig::default();
        if path.exists() {
            let v = read_json(&path)?;
            // Special tokens are strings or AddedToken objects `{"content": ...}`.
            let token = |f: &str| match v.get(f) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(String::from)
                }
                _ => None,
            };
            cfg.bos_token = token("bos_token");
            cfg.eos_token = token("eos_token");
            cfg.pad_token = token("pad_token");
            cfg.unk_token = token("unk_token");
            cfg.chat_template = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: serving uses "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from)),
                _ => None,
            };
        }
        // transformers ≥ 4.43 may save the template beside the config instead.
        let jinja = dir.join("chat_template.jinja");
        if cfg.chat_template.is_none() && jinja.exists() {
            cfg.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| LoadError::io(&jinja, e))?);
        }
        Ok(cfg)
    }
}

/// A model directory, parsed and checked (weights aside).
#[derive(Debug)]
pub struct ModelDir {
    pub path: PathBuf,
    pub config: ModelConfig,
    /// EOS ids: `generation_config.json`'s first, then any others from `config.json`.
    pub eos_token_ids: Vec<u32>,
    pub tokenizer: Tokenizer,
    /// `tokenizer.json` itself, for what the tokenizer does not expose (each token's
    /// bytes, for grammars and logprobs).
    pub tokenizer_json: Value,
    pub tokenizer_config: TokenizerConfig,
}

impl ModelDir {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        if !path.is_dir() {
            return Err(LoadError::Other(format!("{}: not a model directory", path.display())));
        }
        let config = ModelConfig::from_file(&path.join("config.json"))?;

        let gen_path = path.join("generation_config.json");
        let mut eos_token_ids = if gen_path.exists() {
            let v = read_json(&gen_path)?;
            token_id_list(&gen_path, "eos_token_id", v.get("eos_token_id"))?
        } else {
            Vec::new()
        };
        for id in &config.eos_token_ids {
            if !eos_token_ids.contains(id) {
                eos_token_ids.push(*id);
            }
        }

        let tok_path = path.join("tokenizer.json");
        let bad = |message: String| LoadError::Tokenizer { path: tok_path.clone(), message };
        let bytes = std::fs::read(&tok_path).map_err(|e| LoadError::io(&tok_path, e))?;
        let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
        let tokenizer_json = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(LoadError::Tokenizer {
                path: tok_path,
                message: format!(
                    "{vocab} tokens, more than the model's vocab_size ({})",
                    config.vocab_size
                ),
            });
        }
        Ok(ModelDir {
            path: path.to_path_buf(),
            config,
            eos_token_ids,
            tokenizer,
            tokenizer_json,
            tokenizer_config: TokenizerConfig::read(path)?,
        })
    }
}
