//! Start-up failures of the `rill` binary: clear messages, no panics.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `rill` expecting it to exit (a server that starts instead is killed after
/// a minute and fails the test).
fn rill(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(args)
        .args(["--hostname", "127.0.0.1", "--port", "0"])
        .env("RUST_BACKTRACE", "0")
        .env_remove("MODEL_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rill");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("rill {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn unknown_model_id_is_a_clear_error() {
    let out = rill(&["--model-id", "nobody/nothing"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nobody/nothing") && stderr.contains("Hugging Face cache"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn broken_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let out = rill(&["--model-id", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json") && stderr.contains("not valid JSON"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn inconsistent_limits_say_what_to_change() {
    let out = rill(&["--max-total-tokens", "100", "--max-input-tokens", "100"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--max-input-tokens (100) must be positive and less than --max-total-tokens (100)"
        ),
        "{stderr}"
    );
    let out = rill(&["--max-total-tokens", "300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeds the model's max_position_embeddings (256)"), "{stderr}");
}

#[test]
fn unknown_dtype_is_a_clear_error() {
    let out = rill(&["--dtype", "float8"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown --dtype `float8`"), "{stderr}");
}

#[test]
fn device_cuda_without_a_usable_gpu_exits_with_the_reason() {
    if rill_backend::Cuda::probe(0).is_ok() {
        println!("SKIP: this machine has a usable GPU");
        return;
    }
    let out = rill(&["--device", "cuda"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--device cuda") && stderr.contains("no usable CUDA device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_cuda_graphs_list_is_refused_before_anything_loads() {
    let out = rill(&["--cuda-graphs", "1,2,many"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cuda-graphs") && stderr.contains("`many`"), "{stderr}");
}
