//! Broken model directories: every failure is an error naming the file and the
//! field or tensor, never a panic.

use std::path::Path;

use rill_backend::{Cpu, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;

/// Copy a fixture into a temp dir so a test can break it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_model(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    let model = match ModelDir::open(dir) {
        Ok(m) => m,
        Err(e) => return e.to_string(),
    };
    match Runner::load(dir, &model.config, Cpu::new(), &RunnerOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn missing_config_names_the_file() {
    let dir = copy_fixture("llama");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn missing_tokenizer_names_the_file() {
    let dir = copy_fixture("llama");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |v| {
        v["architectures"] = serde_json::json!(["FalconForCausalLM"])
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("FalconForCausalLM") && msg.contains("Qwen2ForCausalLM"), "{msg}");
}

#[test]
fn wrong_shape_names_tensor_expected_and_found() {
    let dir = copy_fixture("llama");
    edit_json(&dir.path().join("config.json"), |v| v["intermediate_size"] = serde_json::json!(96));
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("mlp.gate_proj.weight"), "{msg}");
    assert!(msg.contains("[96, 64]") && msg.contains("[160, 64]"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("llama");
    // Claiming q/k/v biases the checkpoint does not have.
    edit_json(&dir.path().join("config.json"), |v| v["attention_bias"] = serde_json::json!(true));
    let msg = load_err(dir.path());
    assert!(msg.contains("missing tensor `model.layers.0.self_attn.q_proj.bias`"), "{msg}");
}

#[test]
fn missing_shard_names_the_shard() {
    let dir = copy_fixture("llama3");
    std::fs::remove_file(dir.path().join("model-00002-of-00005.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model-00002-of-00005.safetensors"), "{msg}");
}

#[test]
fn truncated_weights_are_an_error() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn eos_ids_merge_generation_config_and_config() {
    let model = ModelDir::open(&fixture_model("llama")).unwrap();
    assert_eq!(model.eos_token_ids, vec![2, 3]);
    assert!(model.tokenizer_config.chat_template.is_some());
    assert_eq!(model.tokenizer_config.bos_token.as_deref(), Some("<s>"));
}
