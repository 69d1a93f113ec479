//! The emulator itself (`cxx/selftest.cu`): warp primitives give what CUDA documents, and
//! misuse fails the launch (or, for memory errors and hangs, the process) as a GPU or
//! compute-sanitizer would make it fail, with a message that says where.

use std::process::Command;

use rill_kernels_emu::{Arg, DevBuf, LaunchConfig, launch};

fn cfg(threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem }
}

/// Launch a self-test kernel whose buffers hold one (or, for `emu_shuffles`, five) elements
/// per thread.
fn run(name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<(), String> {
    // SAFETY: the self-test kernels index their buffers by threadIdx.x (five per thread in
    // emu_shuffles, n - 1 + threadIdx.x in emu_read_past, which is the point of that test)
    // and the callers size them for the block; scalars match the parameters.
    unsafe { launch(name, cfg, args) }
}

fn expect_failure(name: &str, cfg: LaunchConfig, args: &[Arg], needle: &str) {
    let err = run(name, cfg, args).expect_err(name);
    println!("{name}: {err}");
    assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
}

#[test]
fn warp_sum_shuffles_within_each_warp() {
    let out = DevBuf::<f32>::zeros(64);
    run("emu_warp_sum", cfg(64, 0), &[(&out).into()]).unwrap();
    let want: Vec<f32> = (0..64).map(|i| if i < 32 { 496.0 } else { 1520.0 }).collect();
    assert_eq!(out.to_vec(), want);
}

#[test]
fn a_shuffle_over_a_partial_warp_fails() {
    let out = DevBuf::<f32>::zeros(48);
    expect_failure("emu_warp_sum", cfg(48, 0), &[(&out).into()], "lanes 16-31, which are not");
}

#[test]
fn shuffle_modes_and_ballot_match_cuda() {
    let out = DevBuf::<i32>::zeros(5 * 32);
    run("emu_shuffles", cfg(32, 0), &[(&out).into()]).unwrap();
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
    for (lane, got) in out.to_vec().chunks(5).enumerate() {
        let lane = lane as i32;
        let want = [
            (lane & !15) | 7,                               // __shfl_sync(.., 7, 16)
            if lane % 16 >= 3 { lane - 3 } else { lane },   // __shfl_up_sync(.., 3, 16)
            if lane % 8 + 5 < 8 { lane + 5 } else { lane }, // __shfl_down_sync(.., 5, 8)
            lane ^ 9,                                       // __shfl_xor_sync(.., 9)
            ballot,                                         // __ballot_sync(lane % 3 == 0)
        ];
        assert_eq!(got, want, "lane {lane}");
    }
}

#[test]
fn a_shuffle_naming_exited_lanes_fails() {
    let out = DevBuf::<f32>::zeros(32);
    expect_failure("emu_shuffle_after_exit", cfg(32, 0), &[(&out).into()], "exited");
}

#[test]
fn threads_at_different_barriers_fail() {
    expect_failure("emu_divergent_barrier", cfg(64, 0), &[], "wait at the one at selftest.cu:");
}

#[test]
fn a_deadlock_is_reported_not_waited_for() {
    expect_failure("emu_cyclic_syncwarp", cfg(32, 0), &[], "deadlock");
}

#[test]
fn trap_fails_the_launch_naming_the_thread() {
    expect_failure("emu_trap", cfg(64, 0), &[5i32.into()], "thread (5,0,0): __trap()");
}

#[test]
fn a_missing_barrier_shows_in_the_results() {
    let out = DevBuf::<f32>::zeros(128);
    run("emu_missing_barrier", cfg(128, 128 * 4), &[(&out).into()]).unwrap();
    let stale = out.to_vec().iter().filter(|v| v.is_nan()).count();
    // Threads run in a random order, so about half read a slot not yet written (0xff bytes).
    assert!((16..112).contains(&stale), "{stale} of 128 reads saw an unwritten slot");
}

#[test]
fn launches_are_checked_against_the_kernel() {
    let out = DevBuf::<f32>::zeros(512);
    let (n, cols) = (Arg::U64(512), Arg::I32(1));
    let args = [(&out).into(), (&out).into(), cols, n];
    expect_failure("silu_mul", cfg(512, 0), &args, "the kernel allows 256");
    let wrong = [(&out).into(), (&out).into(), Arg::F32(1.0), n];
    expect_failure("silu_mul", cfg(256, 0), &wrong, "argument 2 is i32, the launch passed f32");
    expect_failure("silu_mul", cfg(256, 0), &args[..3], "takes 4 arguments");
    expect_failure("no_such_kernel", cfg(32, 0), &[], "no kernel named no_such_kernel");
}

/// Run `child` (an ignored test of this binary) in a new process with `env`, and return its
/// stderr after checking that it failed.
fn child_fails(child: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", child, "--ignored", "--nocapture"])
        .env("RILL_EMU_CHILD", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{child} succeeded:\n{stderr}");
    stderr
}

fn in_child() -> bool {
    std::env::var("RILL_EMU_CHILD").is_ok()
}

#[test]
#[ignore = "run by out_of_bounds_reads_stop_the_process"]
fn child_read_past() {
    if in_child() {
        let (input, out) = (DevBuf::<f32>::zeros(10), DevBuf::<f32>::zeros(2));
        let _ = run("emu_read_past", cfg(2, 0), &[(&input).into(), (&out).into(), 10i32.into()]);
    }
}

#[test]
fn out_of_bounds_reads_stop_the_process() {
    let stderr = child_fails("child_read_past", &[]);
    assert!(stderr.contains("AddressSanitizer: heap-buffer-overflow"), "{stderr}");
}

#[test]
#[ignore = "run by a_spinning_kernel_is_stopped_by_the_watchdog"]
fn child_spin() {
    if in_child() {
        let flag = DevBuf::<i32>::zeros(1);
        let _ = run("emu_spin", cfg(32, 0), &[(&flag).into()]);
    }
}

#[test]
fn a_spinning_kernel_is_stopped_by_the_watchdog() {
    let stderr = child_fails("child_spin", &[("RILL_EMU_WATCHDOG_SECONDS", "1")]);
    assert!(
        stderr.contains("rill-emu watchdog: emu_spin block (0,0,0) made no progress"),
        "{stderr}"
    );
}
