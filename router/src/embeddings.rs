//! Pooling an embedding request's hidden states into one vector, as sentence-transformers
//! does it.
//!
//! [`crate::infer::Infer::embed`] returns the final-norm hidden state of every prompt
//! token; a model directory that is a sentence-transformers model says how to pool them
//! in `modules.json` (its modules in order) and its `Pooling` module's `config.json`
//! (`pooling_mode`, or the older `pooling_mode_*_token(s)` flags), and whether a
//! `Normalize` module follows. [`PoolingConfig::from_model_dir`] reads that;
//! [`PoolingConfig::pool`] applies it. A directory that says nothing gets mean pooling
//! without normalization (sentence-transformers' default for a plain transformers model).

use std::path::Path;

use serde_json::Value;

use crate::infer::Hidden;

/// How the token states become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token.
    #[default]
    Mean,
    /// The last token's state (decoder embedding models: gte-Qwen2, e5-mistral).
    LastToken,
    /// The first token's state.
    Cls,
}

/// A model's pooling, and whether the pooled vector is L2-normalized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolingConfig {
    pub pooling: Pooling,
    pub normalize: bool,
}

/// sentence-transformers' names of its pooling modes (`pooling_mode`), and the legacy
/// boolean keys that select them, in its order.
const MODES: [(&str, &str, Option<Pooling>); 6] = [
    ("cls", "pooling_mode_cls_token", Some(Pooling::Cls)),
    ("max", "pooling_mode_max_tokens", None),
    ("mean", "pooling_mode_mean_tokens", Some(Pooling::Mean)),
    ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens", None),
    ("weightedmean", "pooling_mode_weightedmean_tokens", None),
    ("lasttoken", "pooling_mode_lasttoken", Some(Pooling::LastToken)),
];

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))
}

/// The module `type` names sentence-transformers writes end with the class name
/// (`sentence_transformers.models.Pooling`, `...sentence_transformer.modules.pooling.Pooling`).
fn is_module(module: &Value, class: &str) -> bool {
    let ty = module.get("type").and_then(Value::as_str).unwrap_or("");
    ty.rsplit('.').next() == Some(class)
}

/// The pooling modes a `Pooling` module's `config.json` selects, by name.
fn pooling_modes(config: &Value) -> Vec<String> {
    match config.get("pooling_mode") {
        Some(Value::String(m)) => return vec![m.clone()],
        Some(Value::Array(ms)) => {
            return ms.iter().map(|m| m.as_str().unwrap_or("?").to_string()).collect();
        }
        _ => {}
    }
    let flagged: Vec<String> = MODES
        .iter()
        .filter(|(_, key, _)| config.get(*key).and_then(Value::as_bool) == Some(true))
        .map(|(name, _, _)| name.to_string())
        .collect();
    // sentence-transformers reads no flag as mean pooling.
    if flagged.is_empty() { vec!["mean".into()] } else { flagged }
}

impl PoolingConfig {
    /// sentence-transformers' modules.json + its Pooling module's config.json (mean /
    /// lasttoken / cls, and whether a Normalize module follows); mean pooling without
    /// normalization when the directory says nothing. An unsupported pooling mode is an
    /// Err naming it.
    pub fn from_model_dir(dir: &Path) -> Result<PoolingConfig, String> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(PoolingConfig::default());
        }
        let modules = read_json(&modules_path)?;
        let modules = modules
            .as_array()
            .ok_or_else(|| format!("{}: not a list of modules", modules_path.display()))?;
        let mut config = PoolingConfig::default();
        let Some(at) = modules.iter().position(|m| is_module(m, "Pooling")) else {
            config.normalize = modules.iter().any(|m| is_module(m, "Normalize"));
            return Ok(config);
        };
        let sub = modules[at].get("path").and_then(Value::as_str).unwrap_or("");
        let path = dir.join(sub).join("config.json");
        let modes = pooling_modes(&read_json(&path)?);
        let [mode] = modes.as_slice() else {
            return Err(format!(
                "{}: pooling modes {} together (their concatenation) are not supported",
                path.display(),
                modes.join(" + ")
            ));
        };
        config.pooling = match MODES.iter().find(|(name, _, _)| name == mode) {
            Some((_, _, Some(pooling))) => *pooling,
            _ => {
                return Err(format!(
                    "{}: pooling mode `{mode}` is not supported (mean, lasttoken and cls are)",
                    path.display()
                ));
            }
        };
        config.normalize = modules[at + 1..].iter().any(|m| is_module(m, "Normalize"));
        Ok(config)
    }

    /// One vector for the prompt: its tokens' states pooled, then L2-normalized if the
    /// model says so. Empty for an empty `hidden`.
    pub fn pool(&self, hidden: &Hidden) -> Vec<f32> {
        let n = hidden.tokens();
        if n == 0 {
            return Vec::new();
        }
        let mut v: Vec<f32> = match self.pooling {
            Pooling::Cls => hidden.row(0).to_vec(),
            Pooling::LastToken => hidden.row(n - 1).to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f64; hidden.dim];
                for i in 0..n {
                    for (s, x) in sum.iter_mut().zip(hidden.row(i)) {
                        *s += f64::from(*x);
                    }
                }
                sum.iter().map(|s| (s / n as f64) as f32).collect()
            }
        };
        if self.normalize {
            // torch's F.normalize: divided by max(‖v‖, 1e-12).
            let norm = norm(&v).max(1e-12);
            v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
        }
        v
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt()
}

/// The cosine of the angle between two vectors of the same length (0 when either is
/// zero).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norms = norm(a) * norm(b);
    if norms == 0.0 { 0.0 } else { (dot / norms) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(rows: &[&[f32]]) -> Hidden {
        Hidden { states: rows.concat(), dim: rows[0].len() }
    }

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = tmp.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        tmp
    }

    const MODULES: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]"#;

    #[test]
    fn pooling_modes_mean_last_and_first_token() {
        let h = hidden(&[&[1.0, 2.0], &[3.0, 6.0], &[5.0, 1.0]]);
        let pool = |pooling| PoolingConfig { pooling, normalize: false }.pool(&h);
        assert_eq!(pool(Pooling::Mean), [3.0, 3.0]);
        assert_eq!(pool(Pooling::LastToken), [5.0, 1.0]);
        assert_eq!(pool(Pooling::Cls), [1.0, 2.0]);
        let unit = PoolingConfig { pooling: Pooling::Cls, normalize: true }.pool(&h);
        let n = 5f32.sqrt();
        assert!((unit[0] - 1.0 / n).abs() < 1e-7 && (unit[1] - 2.0 / n).abs() < 1e-7, "{unit:?}");
        assert_eq!(h.tokens(), 3);
        assert_eq!(h.row(1), [3.0, 6.0]);
        // A zero vector stays zero under normalization (no NaN).
        let zero = PoolingConfig { pooling: Pooling::Mean, normalize: true };
        assert_eq!(zero.pool(&hidden(&[&[0.0, 0.0]])), [0.0, 0.0]);
        assert!(zero.pool(&Hidden { states: Vec::new(), dim: 2 }).is_empty());
    }

    #[test]
    fn cosine_similarity_is_the_angle() {
        assert!((cosine_similarity(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine_similarity(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-7);
        assert!((cosine_similarity(&[1.0, 1.0], &[-2.0, -2.0]) + 1.0).abs() < 1e-7);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn a_directory_that_says_nothing_means_mean_pooling() {
        let empty = dir(&[]);
        assert_eq!(PoolingConfig::from_model_dir(empty.path()), Ok(PoolingConfig::default()));
        assert_eq!(PoolingConfig::default().pooling, Pooling::Mean);
        assert!(!PoolingConfig::default().normalize);
    }

    #[test]
    fn current_and_legacy_pooling_configs_are_read() {
        let new = dir(&[
            ("modules.json", MODULES),
            ("1_Pooling/config.json", r#"{"embedding_dimension": 8, "pooling_mode": "lasttoken"}"#),
        ]);
        let want = PoolingConfig { pooling: Pooling::LastToken, normalize: true };
        assert_eq!(PoolingConfig::from_model_dir(new.path()), Ok(want));

        let legacy = dir(&[
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true,
                    "pooling_mode_mean_tokens": false, "pooling_mode_lasttoken": false}"#,
            ),
        ]);
        let want = PoolingConfig { pooling: Pooling::Cls, normalize: true };
        assert_eq!(PoolingConfig::from_model_dir(legacy.path()), Ok(want));

        // Without a Normalize module after the pooling, and with no mode flagged (mean).
        let two: Value = serde_json::from_str(MODULES).unwrap();
        let two = serde_json::to_string(&two.as_array().unwrap()[..2]).unwrap();
        let plain = dir(&[("modules.json", &two), ("1_Pooling/config.json", "{}")]);
        assert_eq!(PoolingConfig::from_model_dir(plain.path()), Ok(PoolingConfig::default()));
    }

    #[test]
    fn unsupported_modes_are_errors_naming_them() {
        for (config, named) in [
            (r#"{"pooling_mode": "max"}"#, "`max`"),
            (r#"{"pooling_mode_weightedmean_tokens": true}"#, "`weightedmean`"),
            (r#"{"pooling_mode": ["mean", "max"]}"#, "mean + max"),
            (r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#, "cls + mean"),
        ] {
            let d = dir(&[("modules.json", MODULES), ("1_Pooling/config.json", config)]);
            let err = PoolingConfig::from_model_dir(d.path()).unwrap_err();
            assert!(err.contains(named), "{config}: {err}");
        }
        let broken = dir(&[("modules.json", "{")]);
        let err = PoolingConfig::from_model_dir(broken.path()).unwrap_err();
        assert!(err.contains("modules.json"), "{err}");
    }

    #[test]
    fn the_qwen2_fixture_pools_its_last_token_and_normalizes() {
        let models =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/fixtures/models");
        let want = PoolingConfig { pooling: Pooling::LastToken, normalize: true };
        assert_eq!(PoolingConfig::from_model_dir(&models.join("qwen2")), Ok(want));
        let plain = PoolingConfig::from_model_dir(&models.join("llama"));
        assert_eq!(plain, Ok(PoolingConfig::default()));
    }
}
