//! The soak in the test command: `rill-bench --workload soak` for 30 s against the debug
//! server on the tiny `llama` fixture, with a small KV cache so that requests preempt
//! each other. It fails on any leaked block, invariant violation, unexpected answer or
//! resident-memory growth over the run's second half (see `src/bin/rill_bench/soak.rs`).
//!
//! The server binary is the one the same `cargo test --workspace` built; one older than
//! its sources is refused rather than tested.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The newest modification time of the server's sources (the crates `rill` is built from).
fn newest_source() -> SystemTime {
    fn walk(dir: &Path, newest: &mut SystemTime) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(m);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest = SystemTime::UNIX_EPOCH;
    for dir in ["router/src", "backend/src", "kernels/src", "kernels/cuda", "proto/src"] {
        walk(&root.join(dir), &mut newest);
    }
    newest
}

/// `rill` as the same build made it, refusing one older than its sources (which
/// `cargo test -p rill-benches` alone does not rebuild).
fn server_binary() -> PathBuf {
    // target/<profile>/deps/soak-<hash> → target/<profile>/rill
    let exe = std::env::current_exe().unwrap();
    let rill = exe.parent().unwrap().parent().unwrap().join("rill");
    let built = std::fs::metadata(&rill).and_then(|m| m.modified());
    let rebuild = "run `cargo test --workspace`, or `cargo test -p rill-router --no-run` first";
    match built {
        Err(_) => panic!("{} is missing: {rebuild}", rill.display()),
        Ok(t) if t < newest_source() => {
            panic!("{} is older than its sources: {rebuild}", rill.display())
        }
        Ok(_) => rill,
    }
}

#[test]
fn a_mixed_workload_leaks_nothing_and_breaks_nothing() {
    let fixture =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../integration-tests/fixtures/models/llama");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(server_binary())
        .args(["--hostname", "127.0.0.1", "--port", &port.to_string(), "--model-id", fixture])
        .args(["--max-batch-total-tokens", "512"])
        .env_remove("MODEL_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "rill did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let soak = Command::new(env!("CARGO_BIN_EXE_rill-bench"))
        .args(["--url", &url, "--workload", "soak", "--duration-s", "30", "--round-s", "5"])
        .args(["--clients", "6", "--prompt-tokens", "20", "--long-prompt-tokens", "200"])
        .args(["--max-new-tokens", "16", "--max-rss-growth-mib", "16"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let out = String::from_utf8_lossy(&soak.stdout);
    let err = String::from_utf8_lossy(&soak.stderr);
    assert!(soak.status.success(), "the soak failed:\n{out}\n{err}");
    assert!(out.contains("soak passed"), "{out}");
}
