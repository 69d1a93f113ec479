//! Every kernel source compiles with NVRTC for sm_80 and sm_90 without register spills.
//!
//! Runs everywhere (NVRTC and ptxas need no GPU): each source in `SOURCES` is compiled
//! fresh (no cache) for `compute_80` and `compute_90`, then assembled by `ptxas -v` for the
//! matching `sm_XX`; the test fails on any compile error or any function that spills, and
//! prints a register table. Without a toolkit (see `scripts/cuda_wheels.sh`) it prints
//! `SKIP: <why>` and passes, unless `RILL_REQUIRE_NVRTC=1` (the README's test command and CI
//! set it, so there a missing toolkit is a failure).

use rill_kernels::compile::{FunctionReport, KernelCache, compile_source, ptxas_report};
use rill_kernels::{SOURCES, Toolkit};

const ARCHS: [u32; 2] = [80, 90];

/// The toolkit, or `None` after printing why the test is skipped.
fn toolkit() -> Option<Toolkit> {
    let required = std::env::var("RILL_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    match Toolkit::find() {
        Ok(toolkit) => Some(toolkit),
        Err(e) if required => panic!("RILL_REQUIRE_NVRTC=1 but: {e}"),
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

#[test]
fn every_source_compiles_for_sm80_and_sm90_without_spills() {
    let Some(toolkit) = toolkit() else { return };
    let version = toolkit.nvrtc_version().expect("NVRTC version");
    println!(
        "NVRTC {}.{} from {} ({})",
        version.0,
        version.1,
        toolkit.origin,
        toolkit.nvrtc.display()
    );
    let ptxas = toolkit.ptxas.as_ref().expect("ptxas (scripts/cuda_wheels.sh installs it)");
    println!("ptxas {}", ptxas.display());

    // Compile every (source, arch) pair in parallel: NVRTC programs are independent.
    let jobs: Vec<(&str, u32)> =
        SOURCES.iter().flat_map(|(name, _)| ARCHS.map(|arch| (*name, arch))).collect();
    let results: Vec<Result<Vec<FunctionReport>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(name, arch)| {
                let toolkit = &toolkit;
                scope.spawn(move || {
                    let src = SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).unwrap();
                    let ptx = compile_source(name, src, arch, toolkit, &KernelCache::disabled())
                        .map_err(|e| e.to_string())?;
                    ptxas_report(&ptx, arch, toolkit).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("compile thread panicked")).collect()
    });

    let mut failures = Vec::new();
    for arch in ARCHS {
        println!(
            "\nsm_{arch}\n  {:<14} {:<22} {:>5} {:>8} {:>8} {:>6} {:>6}",
            "source", "function", "regs", "spill-st", "spill-ld", "stack", "smem"
        );
        for (&(name, job_arch), result) in jobs.iter().zip(&results) {
            if job_arch != arch {
                continue;
            }
            match result {
                Err(e) => failures.push(format!("{name} sm_{arch}: {e}")),
                Ok(reports) if reports.is_empty() => {
                    failures.push(format!("{name} sm_{arch}: ptxas reported no functions"))
                }
                Ok(reports) => {
                    for r in reports {
                        println!(
                            "  {name:<14} {:<22} {:>5} {:>8} {:>8} {:>6} {:>6}",
                            r.name,
                            r.registers,
                            r.spill_stores,
                            r.spill_loads,
                            r.stack_bytes,
                            r.shared_bytes
                        );
                        if r.spill_stores > 0 || r.spill_loads > 0 {
                            failures.push(format!(
                                "{} sm_{arch}: spills {} bytes stored, {} loaded",
                                r.name, r.spill_stores, r.spill_loads
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "kernel build failures:\n{}", failures.join("\n"));
}

#[test]
fn compile_errors_carry_the_nvrtc_log() {
    let Some(toolkit) = toolkit() else { return };
    let src =
        "#include \"common.cuh\"\nextern \"C\" __global__ void broken() { undefined_name(); }\n";
    let err = compile_source("broken.cu", src, 80, &toolkit, &KernelCache::disabled())
        .expect_err("must not compile");
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains("broken.cu") && text.contains("undefined_name"), "{text}");
}

#[test]
fn the_cache_returns_what_was_compiled() {
    let Some(toolkit) = toolkit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(dir.path());
    let (name, src) = SOURCES[0];
    let first = compile_source(name, src, 80, &toolkit, &cache).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one cache file: {files:?}");
    let file = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(file.starts_with("norm-sm80-") && file.ends_with(".ptx"), "{file}");
    // A second compile reads the file: prove it by planting a marker in it.
    let marked = format!("{first}// cached\n");
    std::fs::write(&files[0], &marked).unwrap();
    assert_eq!(compile_source(name, src, 80, &toolkit, &cache).unwrap(), marked);
    // Another architecture is another key.
    compile_source(name, src, 90, &toolkit, &cache).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn preloading_nvrtc_lets_cudarc_find_it() {
    let Some(toolkit) = toolkit() else { return };
    toolkit.preload().unwrap();
    let name = toolkit.nvrtc.file_name().unwrap().to_string_lossy().into_owned();
    // cudarc (built for CUDA 12) looks for libnvrtc.so.12 by name: a preloaded CUDA 12
    // NVRTC satisfies that with no LD_LIBRARY_PATH. (A CUDA 13 one has another SONAME;
    // Rill's own compiler does not depend on cudarc finding it.)
    if name == "libnvrtc.so.12" {
        // SAFETY: only tries to dlopen NVRTC's known names.
        assert!(unsafe { rill_kernels::cudarc::nvrtc::sys::is_culib_present() });
    } else {
        println!("SKIP: cudarc lookup check needs libnvrtc.so.12, found {name}");
    }
}
