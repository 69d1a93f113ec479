//! Finding cuBLAS without `LD_LIBRARY_PATH`, and telling when it cannot be found.
//!
//! cudarc opens cuBLAS by name on first use (`libcublas.so`, `libcublas.so.12`, ...) and
//! panics if none loads. Like the kernels crate does for NVRTC, [`preload_cublas`] looks in
//! the usual places — `RILL_CUDA_HOME`, `CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda` (a
//! toolkit's `lib64/`, `lib/`, `targets/x86_64-linux/lib/`), the `nvidia-cublas-cu12`
//! wheel's `nvidia/cublas/lib/` under those roots and in the repository's `.cuda/` — and
//! opens `libcublasLt.so.12` then `libcublas.so.12` by absolute path, keeping them loaded:
//! glibc then satisfies cudarc's `dlopen("libcublas.so.12")` (and cuBLAS's own need for
//! cuBLASLt) from the loaded objects by SONAME. [`cublas_present`] is the final word,
//! asked before anything could make cudarc panic.

use std::path::{Path, PathBuf};

/// The major version the bindings were generated for (`cuda-12090`).
const MAJOR: &str = "12";

/// Directories that may hold `libcublas.so.12`, most explicit first.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["RILL_CUDA_HOME", "CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var_os(v).filter(|v| !v.is_empty()).map(PathBuf::from))
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cuda"));
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(".cuda")));
    }
    roots
        .iter()
        .flat_map(|r| {
            ["lib64", "lib", "targets/x86_64-linux/lib", "nvidia/cublas/lib"].map(|d| r.join(d))
        })
        .collect()
}

/// Open cuBLAS (and cuBLASLt, which it needs) from the first directory holding both;
/// returns that directory, or `None` if none does (the libraries may still be on the
/// loader's search path).
pub(super) fn preload_cublas() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND.get_or_init(preload).clone()
}

fn preload() -> Option<PathBuf> {
    let dir = candidate_dirs().into_iter().find(|d| {
        d.join(format!("libcublas.so.{MAJOR}")).is_file()
            && d.join(format!("libcublasLt.so.{MAJOR}")).is_file()
    })?;
    for name in ["libcublasLt", "libcublas"] {
        let path = dir.join(format!("{name}.so.{MAJOR}"));
        // SAFETY: loading cuBLAS runs its initialisers, which have no preconditions; the
        // handle is leaked (never unloaded), so nothing resolved from it can dangle.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => std::mem::forget(lib),
            Err(e) => {
                tracing::warn!("cannot load {}: {e}", path.display());
                return None;
            }
        }
    }
    Some(dir)
}

/// Whether cudarc will find cuBLAS (it panics on first use otherwise).
pub(super) fn cublas_present() -> bool {
    // SAFETY: only attempts to dlopen the library by its candidate names; no symbol is
    // called.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// What to tell a user whose cuBLAS is missing.
pub(super) const CUBLAS_HELP: &str = "cuBLAS (libcublas.so.12 and libcublasLt.so.12) was not \
     found: install the CUDA 12 toolkit's cuBLAS (and put its lib64/ on the loader path, or \
     set CUDA_HOME or RILL_CUDA_HOME to the toolkit), or `pip install --target .cuda \
     nvidia-cublas-cu12` next to the rill binary";
