//! `--model-id`: a local directory, or a Hugging Face id (`org/name`) resolved in the
//! local hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). Nothing is downloaded: Rill never touches the network
//! at run time. Also the names the OpenAI routes accept for the model.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

fn hub_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// The snapshot directory of `id` in `cache`, following `refs/main`.
fn snapshot(cache: &Path, id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs/main")).ok()?;
    let dir = repo.join("snapshots").join(commit.trim());
    dir.is_dir().then_some(dir)
}

pub fn resolve(id: &str) -> Result<PathBuf> {
    let path = Path::new(id);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if let Some(cache) = hub_cache() {
        if let Some(dir) = snapshot(&cache, id) {
            return Ok(dir);
        }
        bail!(
            "--model-id {id}: not a local directory, and not in the Hugging Face cache at {} \
             (download it first, e.g. `huggingface-cli download {id}`)",
            cache.display()
        );
    }
    bail!("--model-id {id}: not a local directory, and no Hugging Face cache location is set")
}

/// The names clients may give as `model`: `--served-model-name`s (`given`), else the
/// `--model-id` as given (`model_name`) and the directory's base name; the bundled model
/// (no `--model-id`) first by its directory's name.
pub fn served_names(
    given: &[String],
    explicit_id: bool,
    model_name: &str,
    dir: &Path,
) -> Vec<String> {
    let mut names: Vec<String> =
        given.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        let base = dir.file_name().and_then(|b| b.to_str()).map(String::from);
        if !explicit_id && let Some(base) = &base {
            names.push(base.clone());
        }
        names.push(model_name.to_string());
        names.extend(base);
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_main_snapshot_in_a_hub_cache() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(snapshot(cache.path(), "org/tiny"), Some(repo.join("snapshots/abc123")));
        assert_eq!(snapshot(cache.path(), "org/other"), None);
    }

    #[test]
    fn served_names_default_to_the_id_and_the_directory() {
        let dir = Path::new("/models/Llama-3.2-1B");
        assert_eq!(
            served_names(&[], true, "meta-llama/Llama-3.2-1B", dir),
            ["meta-llama/Llama-3.2-1B", "Llama-3.2-1B"]
        );
        assert_eq!(served_names(&[], true, "/models/Llama-3.2-1B", dir)[1], "Llama-3.2-1B");
        assert_eq!(
            served_names(&[], false, "/repo/llama", Path::new("/repo/llama")),
            ["llama", "/repo/llama"]
        );
        let given = ["tiny".to_string(), " ".to_string()];
        assert_eq!(served_names(&given, true, "x", dir), ["tiny"]);
    }
}
