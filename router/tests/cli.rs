//! The `rill` binary as a user starts it.

use std::process::Command;

fn rill(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("MODEL_ID")
        .output()
        .expect("run rill")
}

#[test]
fn starts_on_the_bundled_model_and_generates() {
    let out = rill(&["--max-new-tokens", "4", "--kv-cache-memory-mib", "16"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("model loaded"), "{stderr}");
    assert!(
        stderr.contains("generated_tokens") && stderr.contains('4'),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("The quick brown fox"));
}

#[test]
fn unknown_model_id_is_a_clear_error() {
    let out = rill(&["--model-id", "nobody/nothing"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nobody/nothing") && stderr.contains("Hugging Face cache"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn broken_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let out = rill(&["--model-id", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.json") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Machines without AVX-512 take the scalar kernels, which implement the same
/// arithmetic lane by lane: the generated text must not change.
#[test]
fn scalar_fallback_generates_the_same_text() {
    let args = ["--max-new-tokens", "12", "--kv-cache-memory-mib", "16"];
    let simd = rill(&args);
    let scalar = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(args)
        .env("RILL_NO_AVX512", "1")
        .env_remove("MODEL_ID")
        .output()
        .expect("run rill");
    assert!(simd.status.success() && scalar.status.success());
    assert_eq!(simd.stdout, scalar.stdout);
}
