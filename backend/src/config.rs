//! `config.json` → [`ModelConfig`], accepting both the transformers 4.x and 5.x forms.
//!
//! transformers 5 writes `rope_parameters` (holding `rope_theta`, `rope_type` and the
//! scaling fields) and `dtype`, where 4.x wrote top-level `rope_theta`, a separate
//! `rope_scaling` (with `type` or `rope_type`) and `torch_dtype`. Both are read into the
//! same [`RopeConfig`]. Per-layer attention windows come from `layer_types` when present
//! (transformers 5), else from Mistral's `sliding_window` or Qwen2's
//! `use_sliding_window`/`max_window_layers`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::LoadError;

/// The decoder families Rill runs. They share one implementation
/// (`models::llama`); the differences are config switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub const SUPPORTED: [&'static str; 3] =
        ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

    fn from_hf(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Self::Llama),
            "MistralForCausalLM" => Some(Self::Mistral),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// How rotary frequencies are derived from the base `theta`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (a.k.a. position interpolation).
    Linear { factor: f32 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    pub scaling: RopeScaling,
}

/// The dtype a checkpoint declares (`dtype` / `torch_dtype`); the tensors' own
/// dtypes are what the loader actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim_start_matches("torch.") {
            "float32" | "float" | "f32" => Some(Self::F32),
            "bfloat16" | "bf16" => Some(Self::Bf16),
            "float16" | "half" | "f16" => Some(Self::F16),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }
}

/// Everything about a model's shape that the runner needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope: RopeConfig,
    /// Bias on the q/k/v projections (always for Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` covers it too).
    pub o_bias: bool,
    /// Bias on gate/up/down (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer: `Some(w)` when a query at position p sees only keys in `(p - w, p]`.
    pub sliding_windows: Vec<Option<usize>>,
    pub dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// A JSON object with the path it came from, so every error names file and field.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize(&self, field: &'static str) -> Result<Option<usize>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                LoadError::invalid(
                    self.path,
                    field,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
        }
    }

    fn required_usize(&self, field: &'static str) -> Result<usize, LoadError> {
        let n =
            self.usize(field)?.ok_or(LoadError::MissingField { path: self.path.into(), field })?;
        if n == 0 {
            return Err(LoadError::invalid(self.path, field, "must be positive"));
        }
        Ok(n)
    }

    fn f32(&self, field: &str) -> Result<Option<f32>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                LoadError::invalid(self.path, field, format!("expected a number, found {v}"))
            }),
        }
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                LoadError::invalid(self.path, field, format!("expected true or false, found {v}"))
            }),
        }
    }

    fn str(&self, field: &str) -> Result<Option<&'a str>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                LoadError::invalid(self.path, field, format!("expected a string, found {v}"))
            }),
        }
    }

    fn object(&self, field: &str) -> Result<Option<Fields<'a>>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { path: self.path, map })),
            Some(v) => {
                Err(LoadError::invalid(self.path, field, format!("expected an object, found {v}")))
            }
        }
    }
}

/// `eos_token_id` may be an int or a list of ints (config.json and generation_config.json).
pub(crate) fn token_id_list(
    path: &Path,
    field: &str,
    value: Option<&Value>,
) -> Result<Vec<u32>, LoadError> {
    let bad = |v: &Value| {
        LoadError::invalid(path, field, format!("expected a token id or a list of them, found {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(v)))
            .collect(),
        Some(v) => {
            v.as_u64().and_then(|n| u32::try_from(n).ok()).map(|n| vec![n]).ok_or_else(|| bad(v))
        }
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| LoadError::Json { path: path.into(), source })
}

impl ModelConfig {
    /// Read `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        Self::from_json(path, &read_json(path)?)
    }

    /// Parse an already-read `config.json`; `path` is only used in errors.
    pub fn from_json(path: &Path, value: &Value) -> Result<Self, LoadError> {
        let Value::Object(map) = value else {
            return Err(LoadError::invalid(path, "<root>", "expected a JSON object"));
        };
        let f = Fields { path, map };

        let architecture = Self::architecture(&f)?;
        let hidden_size = f.required_usize("hidden_size")?;
        let num_heads = f.required_usize("num_attention_heads")?;
        let num_kv_heads = f.usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(LoadError::invalid(
                path,
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match f.usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(LoadError::invalid(
                    path,
                    "head_dim",
                    format!(
                        "absent, and hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads})"
                    ),
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(LoadError::invalid(
                path,
                "head_dim",
                format!("{head_dim} must be even and positive"),
            ));
        }
        let num_layers = f.required_usize("num_hidden_layers")?;
        let attention_bias = f.bool("attention_bias")?.unwrap_or(false);
        let qkv_bias = architecture == Architecture::Qwen2 || attention_bias;

        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: f.required_usize("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: f.required_usize("vocab_size")?,
            rms_norm_eps: f.f32("rms_norm_eps")?.unwrap_or(1e-6),
            max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
            rope: Self::rope(&f)?,
            qkv_bias,
            o_bias: architecture == Architecture::Llama && attention_bias,
            mlp_bias: f.bool("mlp_bias")?.unwrap_or(false),
            sliding_windows: Self::sliding_windows(&f, architecture, num_layers)?,
            dtype: match f.str("dtype")?.or(f.str("torch_dtype")?) {
                None => None,
                Some(s) => Some(DType::parse(s).ok_or_else(|| {
                    LoadError::invalid(path, "dtype", format!("unsupported dtype `{s}`"))
                })?),
            },
            bos_token_id: f.usize("bos_token_id")?.map(|n| n as u32),
            eos_token_ids: token_id_list(path, "eos_token_id", f.get("eos_token_id"))?,
        })
    }

    fn architecture(f: &Fields) -> Result<Architecture, LoadError> {
        let archs = f
            .get("architectures")
            .and_then(Value::as_array)
            .ok_or(LoadError::MissingField { path: f.path.into(), field: "architectures" })?;
        let name = archs.first().and_then(Value::as_str).unwrap_or("<none>");
        Architecture::from_hf(name).ok_or_else(|| LoadError::UnsupportedArchitecture {
            path: f.path.into(),
            found: name.to_string(),
            supported: Architecture::SUPPORTED.to_vec(),
        })
    }

    fn rope(f: &Fields) -> Result<RopeConfig, LoadError> {
        // 5.x: everything in `rope_parameters`; 4.x: `rope_theta` + `rope_scaling`.
        let params = f.object("rope_parameters")?;
        let scaling = match &params {
            Some(p) => Some(Fields { path: p.path, map: p.map }),
            None => f.object("rope_scaling")?,
        };
        let theta = match &params {
            Some(p) => p.f32("rope_theta")?,
            None => None,
        };
        let theta = theta.or(f.f32("rope_theta")?).unwrap_or(10_000.0);
        let Some(s) = scaling else {
            return Ok(RopeConfig { theta, scaling: RopeScaling::Default });
        };
        let kind = s.str("rope_type")?.or(s.str("type")?).unwrap_or("default");
        let factor = |field: &'static str| {
            s.f32(field)?.ok_or(LoadError::MissingField { path: f.path.into(), field })
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: factor("factor")?,
                low_freq_factor: factor("low_freq_factor")?,
                high_freq_factor: factor("high_freq_factor")?,
                original_max_position: s.usize("original_max_position_embeddings")?.ok_or(
                    LoadError::MissingField {
                        path: f.path.into(),
                        field: "original_max_position_embeddings",
                    },
                )?,
            },
            other => {
                return Err(LoadError::invalid(
                    f.path,
                    "rope_type",
                    format!("unsupported rope type `{other}` (supported: default, linear, llama3)"),
                ));
            }
        };
        Ok(RopeConfig { theta, scaling })
    }

    fn sliding_windows(
        f: &Fields,
        arch: Architecture,
        num_layers: usize,
    ) -> Result<Vec<Option<usize>>, LoadError> {
        let window = f.usize("sliding_window")?;
        if let Some(types) = f.get("layer_types") {
            let types = types.as_array().filter(|t| t.len() == num_layers).ok_or_else(|| {
                LoadError::invalid(
                    f.path,
                    "layer_types",
                    format!("expected a list of {num_layers} layer types"),
                )
            })?;
            return types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(None),
                    Some("sliding_attention") => window.map(Some).ok_or(LoadError::MissingField {
                        path: f.path.into(),
                        field: "sliding_window",
                    }),
                    _ => Err(LoadError::invalid(
                        f.path,
                        "layer_types",
                        format!("unsupported layer type {t}"),
                    )),
                })
                .collect();
        }
        Ok(match arch {
            Architecture::Llama => vec![None; num_layers],
            Architecture::Mistral => vec![window; num_layers],
            Architecture::Qwen2 => {
                let enabled = f.bool("use_sliding_window")?.unwrap_or(false);
                let first = f.usize("max_window_layers")?.unwrap_or(num_layers);
                (0..num_layers).map(|i| window.filter(|_| enabled && i >= first)).collect()
            }
        })
    }

    /// Number of f32/bf16/f16 elements in every weight the model loads.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let layer = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_layers * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig, LoadError> {
        ModelConfig::from_json(Path::new("config.json"), &v)
    }

    fn llama_v4() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": true,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000
        })
    }

    #[test]
    fn transformers_4_llama_3_2() {
        let c = parse(llama_v4()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.rope.theta, 500000.0);
        assert_eq!(
            c.rope.scaling,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192
            }
        );
        assert_eq!(c.dtype, Some(DType::Bf16));
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.sliding_windows, vec![None; 16]);
    }

    #[test]
    fn transformers_5_form_matches_4() {
        let mut v = llama_v4();
        let o = v.as_object_mut().unwrap();
        let mut params = o.remove("rope_scaling").unwrap();
        params["rope_theta"] = o.remove("rope_theta").unwrap();
        o.insert("rope_parameters".into(), params);
        let dtype = o.remove("torch_dtype").unwrap();
        o.insert("dtype".into(), dtype);
        assert_eq!(parse(v).unwrap(), parse(llama_v4()).unwrap());
    }

    #[test]
    fn old_rope_scaling_type_key_and_int_eos() {
        let mut v = llama_v4();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        v["eos_token_id"] = json!(2);
        let c = parse(v).unwrap();
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn explicit_head_dim_differs_from_hidden_over_heads() {
        let mut v = llama_v4();
        v["head_dim"] = json!(128);
        assert_eq!(parse(v).unwrap().head_dim, 128);
    }

    #[test]
    fn qwen2_windows_from_max_window_layers_and_layer_types() {
        let mut v = llama_v4();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["num_hidden_layers"] = json!(4);
        v["use_sliding_window"] = json!(true);
        v["sliding_window"] = json!(32);
        v["max_window_layers"] = json!(2);
        let c = parse(v.clone()).unwrap();
        assert!(c.qkv_bias);
        assert_eq!(c.sliding_windows, vec![None, None, Some(32), Some(32)]);
        v["layer_types"] =
            json!(["sliding_attention", "full_attention", "full_attention", "sliding_attention"]);
        assert_eq!(parse(v).unwrap().sliding_windows, vec![Some(32), None, None, Some(32)]);
    }

    #[test]
    fn qwen2_window_off_unless_enabled() {
        let mut v = llama_v4();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["use_sliding_window"] = json!(false);
        v["sliding_window"] = json!(4096);
        assert_eq!(parse(v).unwrap().sliding_windows, vec![None; 16]);
    }

    #[test]
    fn mistral_window_everywhere() {
        let mut v = llama_v4();
        v["architectures"] = json!(["MistralForCausalLM"]);
        v["sliding_window"] = json!(4096);
        assert_eq!(parse(v).unwrap().sliding_windows, vec![Some(4096); 16]);
    }

    #[test]
    fn unsupported_architecture_is_named_with_the_supported_list() {
        let mut v = llama_v4();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("config.json"), "{msg}");
        assert!(msg.contains("GPT2LMHeadModel"), "{msg}");
        assert!(msg.contains("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"), "{msg}");
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let mut v = llama_v4();
        v.as_object_mut().unwrap().remove("hidden_size");
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("`hidden_size`"), "{msg}");

        let mut v = llama_v4();
        v["num_key_value_heads"] = json!(5);
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("num_key_value_heads"), "{msg}");

        let mut v = llama_v4();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("yarn"), "{msg}");

        let mut v = llama_v4();
        v["vocab_size"] = json!("big");
        let msg = parse(v).unwrap_err().to_string();
        assert!(msg.contains("vocab_size"), "{msg}");
    }

    #[test]
    fn parameter_count_of_llama_3_2_1b() {
        // Llama-3.2-1B: 1.236B parameters with tied embeddings.
        let c = parse(llama_v4()).unwrap();
        assert_eq!(c.num_parameters(), 1_235_814_400);
    }
}
