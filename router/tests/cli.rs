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
    // The bundled demo model's context is 1024.
    let out = rill(&["--max-total-tokens", "2000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeds the model's max_position_embeddings (1024)"), "{stderr}");
}

#[test]
fn unknown_dtype_is_a_clear_error() {
    let out = rill(&["--dtype", "float8"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // clap's refusal, naming the value and the choices.
    assert!(stderr.contains("invalid value 'float8' for '--dtype <DTYPE>'"), "{stderr}");
    assert!(stderr.contains("bfloat16, float16, float32"), "{stderr}");
    // The aliases transformers and the benches use are accepted.
    let out = rill(&["--dtype", "bf16", "--help"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

/// Kubernetes sets `HOSTNAME` to the pod's name; TGI binds it and fails. Rill listens on
/// 0.0.0.0 whatever `HOSTNAME` says.
#[test]
fn the_hostname_environment_variable_is_not_the_bind_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fixture =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["--model-id", fixture, "--port", &port.to_string(), "--kv-cache-memory-mib", "16"])
        .env("HOSTNAME", "rill-5f7c9d-x2q4z")
        .env_remove("MODEL_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run rill");
    let start = Instant::now();
    let healthy = loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut s| {
            use std::io::{Read, Write};
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        });
        if answer.is_some_and(|a| a.starts_with("HTTP/1.0 200") || a.starts_with("HTTP/1.1 200")) {
            break true;
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy, "rill did not serve on 0.0.0.0 with HOSTNAME set to a pod name");
}
