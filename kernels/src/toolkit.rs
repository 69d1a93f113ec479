//! Finding the CUDA pieces the kernels need to compile: NVRTC, the runtime headers, ptxas.
//!
//! [`Toolkit::find`] looks, in order, at `RILL_CUDA_HOME`, `CUDA_HOME`, `CUDA_PATH`,
//! `/usr/local/cuda`, and the repository's `.cuda/` (installed by `scripts/cuda_wheels.sh`:
//! found from this crate's source directory, and next to the running executable so a
//! binary carried to another machine can bring its own). A root may be laid out like
//! `.cuda/` (NVIDIA's PyPI wheels: `nvidia/cuda_nvrtc/lib`, `nvidia/cuda_runtime/include`,
//! `nvidia/cuda_nvcc/bin`; also CUDA 13's `nvidia/cu13/{lib,include,bin}`) or like a CUDA
//! toolkit (`lib64/` or `lib/`, `include/`, `bin/`). The first root holding both NVRTC and
//! the headers wins; ptxas (only needed for the register report) is taken from that same
//! root, because an older ptxas cannot read a newer NVRTC's PTX.
//!
//! [`Toolkit::preload`] opens NVRTC by absolute path and keeps it loaded for the life of
//! the process. The compiler ([`crate::compile`]) calls NVRTC through that handle, so the
//! library used is exactly the one found (and whose version keys the cache); and since glibc
//! satisfies a later `dlopen("libnvrtc.so.12")` from an already loaded object with that
//! SONAME, cudarc's own by-name loading finds it too, with no `LD_LIBRARY_PATH`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::KernelError;

/// Where each CUDA piece the kernels need was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolkit {
    /// The NVRTC shared library (`libnvrtc.so.12`, `libnvrtc.so.13`, ...).
    pub nvrtc: PathBuf,
    /// A directory holding `cuda_fp16.h` and `cuda_bf16.h`.
    pub include: PathBuf,
    /// `ptxas`, if the root has one (for [`crate::compile::ptxas_report`]).
    pub ptxas: Option<PathBuf>,
    /// Which root this came from, for messages (`"RILL_CUDA_HOME=/opt/cuda"`).
    pub origin: String,
}

/// How to supply the toolkit, appended to every "not found" message.
const HOW_TO_SUPPLY: &str = "run scripts/cuda_wheels.sh (installs NVRTC 12.9, the CUDA \
     runtime headers and ptxas from PyPI into .cuda/ at the repository root; copy that .cuda/ \
     next to the rill binary on another machine), or set RILL_CUDA_HOME to a CUDA toolkit \
     (lib64/libnvrtc.so.*, include/cuda_bf16.h) or to such a .cuda/ directory";

impl Toolkit {
    /// Search the roots in the documented order.
    pub fn find() -> Result<Toolkit, KernelError> {
        // An explicit RILL_CUDA_HOME must work: silently falling through to another toolkit
        // would hide a typo.
        if let Some(home) = std::env::var_os("RILL_CUDA_HOME").filter(|v| !v.is_empty()) {
            let root = PathBuf::from(home);
            let origin = format!("RILL_CUDA_HOME={}", root.display());
            return Toolkit::at(&root, &origin).ok_or_else(|| {
                KernelError::Toolkit(format!(
                    "{origin} has no NVRTC library (lib64/libnvrtc.so.*, \
                     nvidia/cuda_nvrtc/lib/libnvrtc.so.*) together with the CUDA headers \
                     (include/cuda_bf16.h, nvidia/cuda_runtime/include/cuda_bf16.h); \
                     {HOW_TO_SUPPLY}"
                ))
            });
        }
        let candidates = candidate_roots();
        for (root, origin) in &candidates {
            if let Some(found) = Toolkit::at(root, origin) {
                return Ok(found);
            }
        }
        let searched: Vec<String> = candidates.iter().map(|(_, origin)| origin.clone()).collect();
        Err(KernelError::Toolkit(format!(
            "no CUDA toolkit with NVRTC and the cuda_fp16.h/cuda_bf16.h headers found \
             (searched {}); {HOW_TO_SUPPLY}",
            searched.join(", ")
        )))
    }

    /// The toolkit under `root`, if it holds NVRTC and the headers.
    pub fn at(root: &Path, origin: &str) -> Option<Toolkit> {
        layouts(root).into_iter().find_map(|layout| {
            let nvrtc = layout.lib_dirs.iter().find_map(|dir| nvrtc_in(dir))?;
            let include = layout.include_dirs.into_iter().find(|dir| has_headers(dir))?;
            let ptxas = Some(layout.bin_dir.join("ptxas")).filter(|p| p.is_file());
            Some(Toolkit { nvrtc, include, ptxas, origin: origin.to_string() })
        })
    }

    /// Load NVRTC (once per path per process) and return the handle.
    pub fn preload(&self) -> Result<&'static libloading::Library, KernelError> {
        static LOADED: OnceLock<Mutex<Vec<(PathBuf, &'static libloading::Library)>>> =
            OnceLock::new();
        let loaded = LOADED.get_or_init(|| Mutex::new(Vec::new()));
        // A poisoned lock only means another thread panicked while pushing; the list is
        // still a valid list of loaded libraries.
        let mut loaded = loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, lib)) = loaded.iter().find(|(path, _)| *path == self.nvrtc) {
            return Ok(lib);
        }
        // SAFETY: loading NVRTC runs its initialisers, which have no preconditions; the
        // library is leaked below, so no symbol taken from it can outlive it.
        let lib = unsafe { libloading::Library::new(&self.nvrtc) }.map_err(|e| {
            KernelError::Toolkit(format!(
                "cannot load NVRTC from {} (found via {}): {e}; {HOW_TO_SUPPLY}",
                self.nvrtc.display(),
                self.origin
            ))
        })?;
        // Never unloaded: NVRTC registers process-wide state, and the compiler's function
        // pointers must stay valid for the whole run.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        loaded.push((self.nvrtc.clone(), lib));
        Ok(lib)
    }

    /// The NVRTC library's version, `(major, minor)`.
    pub fn nvrtc_version(&self) -> Result<(i32, i32), KernelError> {
        crate::compile::Nvrtc::load(self)?.version()
    }
}

/// Roots after `RILL_CUDA_HOME`, each with how it was found.
fn candidate_roots() -> Vec<(PathBuf, String)> {
    let mut roots = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let root = PathBuf::from(v);
            let origin = format!("{var}={}", root.display());
            roots.push((root, origin));
        }
    }
    roots.push((PathBuf::from("/usr/local/cuda"), "/usr/local/cuda".to_string()));
    // This crate lives at <repo>/kernels, so the repository's .cuda/ is one level up.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest.parent().unwrap_or(manifest).join(".cuda");
    roots.push((repo.clone(), format!("the repository's .cuda/ ({})", repo.display())));
    // Next to the executable, and up to three levels above it (target/<profile>/deps/).
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            let root = dir.join(".cuda");
            let origin = format!("{} next to the executable", root.display());
            roots.push((root, origin));
        }
    }
    roots
}

/// One way of laying out a root.
struct Layout {
    lib_dirs: Vec<PathBuf>,
    include_dirs: Vec<PathBuf>,
    bin_dir: PathBuf,
}

fn layouts(root: &Path) -> Vec<Layout> {
    let toolkit = |base: PathBuf| Layout {
        lib_dirs: vec![
            base.join("lib64"),
            base.join("lib"),
            base.join("targets/x86_64-linux/lib"),
            base.join("targets/sbsa-linux/lib"),
        ],
        include_dirs: vec![
            base.join("include"),
            base.join("targets/x86_64-linux/include"),
            base.join("targets/sbsa-linux/include"),
        ],
        bin_dir: base.join("bin"),
    };
    let nvidia = root.join("nvidia");
    vec![
        // The CUDA 12 PyPI wheels, one directory per package.
        Layout {
            lib_dirs: vec![nvidia.join("cuda_nvrtc/lib")],
            include_dirs: vec![nvidia.join("cuda_runtime/include")],
            bin_dir: nvidia.join("cuda_nvcc/bin"),
        },
        // The CUDA 13 PyPI wheels share one toolkit-like directory.
        toolkit(nvidia.join("cu13")),
        toolkit(root.to_path_buf()),
    ]
}

/// The NVRTC library in `dir`: `libnvrtc.so.<major>` (the runtime name, highest major
/// first), else the development symlink `libnvrtc.so`.
fn nvrtc_in(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut versioned: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let major = name.strip_prefix("libnvrtc.so.")?;
            // `libnvrtc.so.12` but not `libnvrtc.so.12.9.86` duplicates of it.
            Some((major.parse().ok()?, e.path()))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, path)| path).or_else(|| {
        let plain = dir.join("libnvrtc.so");
        plain.is_file().then_some(plain)
    })
}

fn has_headers(dir: &Path) -> bool {
    dir.join("cuda_fp16.h").is_file() && dir.join("cuda_bf16.h").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn finds_a_wheel_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
        touch(&root.join("nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9"));
        touch(&root.join("nvidia/cuda_runtime/include/cuda_fp16.h"));
        touch(&root.join("nvidia/cuda_runtime/include/cuda_bf16.h"));
        touch(&root.join("nvidia/cuda_nvcc/bin/ptxas"));
        let found = Toolkit::at(root, "test").unwrap();
        assert_eq!(found.nvrtc, root.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
        assert_eq!(found.include, root.join("nvidia/cuda_runtime/include"));
        assert_eq!(found.ptxas, Some(root.join("nvidia/cuda_nvcc/bin/ptxas")));
    }

    #[test]
    fn finds_a_toolkit_layout_and_prefers_the_newest_nvrtc() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("lib64/libnvrtc.so"));
        touch(&root.join("lib64/libnvrtc.so.12"));
        touch(&root.join("lib64/libnvrtc.so.13"));
        touch(&root.join("lib64/libnvrtc.so.13.0.48"));
        touch(&root.join("include/cuda_fp16.h"));
        touch(&root.join("include/cuda_bf16.h"));
        let found = Toolkit::at(root, "test").unwrap();
        assert_eq!(found.nvrtc, root.join("lib64/libnvrtc.so.13"));
        assert_eq!(found.include, root.join("include"));
        assert_eq!(found.ptxas, None);
    }

    #[test]
    fn needs_both_the_library_and_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("lib64/libnvrtc.so.12"));
        assert_eq!(Toolkit::at(root, "test"), None);
        touch(&root.join("include/cuda_fp16.h"));
        assert_eq!(Toolkit::at(root, "test"), None);
        touch(&root.join("include/cuda_bf16.h"));
        assert!(Toolkit::at(root, "test").is_some());
    }
}
