//! Broken model directories: every failure is an error naming the file and the
//! field or tensor, never a panic.

use std::path::Path;

use rill_backend::{Cpu, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;

use crate::wrapped::Wrapped;

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

/// The start-up order on a device with memory of its own (a GPU's path, on the wrapped
/// CPU device): weights, a warm-up step as large as the scheduler's, the KV cache sized
/// from the memory then free less the reserve, then the decode replays over that cache.
#[test]
fn a_device_with_memory_warms_up_then_sizes_the_cache_then_records() {
    use rill_backend::device::KvLayout;
    use rill_backend::{FIXED_RESERVE_BYTES, KvCacheSize, step_bytes};

    let dir = fixture_model("llama");
    let c = ModelDir::open(&dir).unwrap().config;
    let reserved = step_bytes(&c, 40) + step_bytes(&c, 4) + FIXED_RESERVE_BYTES;
    let free = reserved + (64 << 20);
    let opts = RunnerOptions {
        kv_cache: KvCacheSize::FreeMemory(0.5),
        max_step_tokens: Some(40),
        replay_batch_sizes: vec![1, 2, 4],
        ..RunnerOptions::default()
    };
    let runner = Runner::load(&dir, &c, Wrapped::with_memory(free, 2 * free), &opts).unwrap();
    let blocks = (32 << 20) / KvLayout::block_bytes(&c);
    assert_eq!(runner.num_blocks(), blocks);
    assert_eq!(runner.max_step_tokens(), 40);
    let events = runner.device().events.lock().unwrap().clone();
    let want = [
        "memory_info".to_string(),
        "kv_cache 3".into(), // the warm-up's throwaway cache: 40 rows
        "plan 40".into(),
        "memory_info".into(),
        format!("kv_cache {blocks}"),
        "replay [1, 2, 4]".into(),
    ];
    assert_eq!(events, want);
}

/// The CPU shares the host's memory: no warm-up, the default cache when none is sized,
/// and the KV cache from a token count in whole blocks; bad sizes are refused.
#[test]
fn the_cpu_takes_the_host_default_and_explicit_sizes() {
    use rill_backend::device::{Device, KvLayout};
    use rill_backend::{HOST_KV_CACHE_BYTES, KvCacheSize};

    let dir = fixture_model("llama");
    let c = ModelDir::open(&dir).unwrap().config;
    let load = |kv_cache| {
        let opts = RunnerOptions { kv_cache, ..RunnerOptions::default() };
        Runner::load(&dir, &c, Wrapped::new(false), &opts)
    };
    let runner = load(KvCacheSize::FreeMemory(0.9)).unwrap();
    assert_eq!(runner.num_blocks(), HOST_KV_CACHE_BYTES / KvLayout::block_bytes(&c));
    assert_eq!(runner.max_step_tokens(), <Cpu as Device>::DEFAULT_STEP_TOKENS);
    let events = runner.device().events.lock().unwrap().clone();
    assert!(!events.iter().any(|e| e.starts_with("plan")), "no warm-up: {events:?}");
    assert_eq!(load(KvCacheSize::Tokens(33)).unwrap().num_blocks(), 3);
    for bad in [0.0, 1.5, f64::NAN] {
        let e = load(KvCacheSize::FreeMemory(bad)).unwrap_err().to_string();
        assert!(e.contains("(0, 1]"), "{e}");
    }
    let e = load(KvCacheSize::Bytes(10)).unwrap_err().to_string();
    assert!(e.contains("holds no block"), "{e}");
}

/// `--precision` reaches the device's attention as the load resolved it: a 16-bit model
/// at the precision asked for, an f32 model exactly whatever was asked.
#[test]
fn precision_is_chosen_at_load_and_f32_models_are_always_exact() {
    use rill_backend::Precision::{Exact, Fast};
    use rill_proto::ForwardBatch;

    for (name, asked, got) in [
        ("llama", Fast, Exact),
        ("llama", Exact, Exact),
        ("llama-bfloat16", Fast, Fast),
        ("llama-bfloat16", Exact, Exact),
    ] {
        let dir = fixture_model(name);
        let c = ModelDir::open(&dir).unwrap().config;
        let opts = RunnerOptions { precision: asked, ..RunnerOptions::default() };
        let mut runner = Runner::load(&dir, &c, Wrapped::new(false), &opts).unwrap();
        let seq = crate::step_errors::seq(0, &[1, 2], 0, &[0]);
        runner.step(&ForwardBatch { seqs: vec![seq], ..Default::default() }).unwrap();
        let ran = *runner.device().attention_precision.lock().unwrap();
        assert_eq!(ran, Some(got), "{name} at {asked:?}");
    }
}
