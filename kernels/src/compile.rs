//! Compiling the kernel sources to PTX with NVRTC, the on-disk PTX cache, and the ptxas
//! register/spill report.
//!
//! [`compile_ptx`] compiles one of [`crate::SOURCES`] for one architecture (`compute_XX`
//! PTX, which the driver assembles for the device when the module loads; PTX is what
//! cudarc's `load_module` takes). NVRTC is called through [`Nvrtc`], a table of function
//! pointers taken from the library [`Toolkit::preload`] opened, so the compiler is exactly
//! the one that was found. `common.cuh` is handed to NVRTC as an in-memory header, so the
//! sources need nothing from disk but the CUDA runtime headers.
//!
//! [`KernelCache`] keeps compiled PTX on disk (default `~/.cache/rill/kernels`, override
//! `RILL_KERNEL_CACHE`) under a stable FNV-1a 64 hash of everything that determines the
//! output: the cache format, the source's name and text, `common.cuh`, the architecture, the
//! NVRTC version and the full option list (which includes the header directory). A start-up
//! with a warm cache costs file reads instead of seconds of compilation. Cache trouble (an
//! unwritable directory) never fails a compile; it only costs the next start-up the time.
//!
//! [`ptxas_report`] assembles PTX with `ptxas -v` and reads back each function's registers
//! and spills: the compile test fails on any spill.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::Ptx;

use crate::toolkit::Toolkit;
use crate::{COMMON_HEADER, KernelError, SOURCES};

/// Bumped when the cache file format or key recipe changes.
const CACHE_FORMAT: &str = "rill-kernels-ptx-1";

type NvrtcProgram = *mut c_void;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type CreateFn = unsafe extern "C" fn(
    *mut NvrtcProgram,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut NvrtcProgram) -> c_int;

/// The NVRTC entry points the compiler uses, resolved from the preloaded library.
#[derive(Clone, Copy, Debug)]
pub struct Nvrtc {
    version: VersionFn,
    error_string: ErrorStringFn,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    destroy: DestroyFn,
}

impl Nvrtc {
    /// Resolve the entry points from `toolkit`'s NVRTC (loading it if needed).
    pub fn load(toolkit: &Toolkit) -> Result<Nvrtc, KernelError> {
        let lib = toolkit.preload()?;
        fn get<T: Copy>(lib: &'static libloading::Library, name: &str) -> Result<T, KernelError> {
            // SAFETY: every `T` used below is the C signature nvrtc.h declares for `name`,
            // and the library is never unloaded (`Toolkit::preload` leaks it), so the
            // copied function pointer stays valid.
            unsafe { lib.get::<T>(name) }
                .map(|sym| *sym)
                .map_err(|e| KernelError::Toolkit(format!("NVRTC library lacks {name}: {e}")))
        }
        Ok(Nvrtc {
            version: get(lib, "nvrtcVersion")?,
            error_string: get(lib, "nvrtcGetErrorString")?,
            create: get(lib, "nvrtcCreateProgram")?,
            compile: get(lib, "nvrtcCompileProgram")?,
            log_size: get(lib, "nvrtcGetProgramLogSize")?,
            log: get(lib, "nvrtcGetProgramLog")?,
            ptx_size: get(lib, "nvrtcGetPTXSize")?,
            ptx: get(lib, "nvrtcGetPTX")?,
            destroy: get(lib, "nvrtcDestroyProgram")?,
        })
    }

    /// `(major, minor)` of the library.
    pub fn version(&self) -> Result<(i32, i32), KernelError> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion writes two ints through valid pointers.
        let code = unsafe { (self.version)(&mut major, &mut minor) };
        self.check("nvrtcVersion", code)?;
        Ok((major, minor))
    }

    fn check(&self, call: &'static str, code: c_int) -> Result<(), KernelError> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString accepts any code and returns a static C string
        // (or null for codes it does not know).
        let text = unsafe { (self.error_string)(code) };
        let message = if text.is_null() {
            format!("error {code}")
        } else {
            // SAFETY: non-null, NUL-terminated, static storage per nvrtc.h.
            unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
        };
        Err(KernelError::Nvrtc { call, message })
    }

    /// Compile `src` (named `name`, with `common.cuh` available to `#include`) with
    /// `options`, returning the PTX text, or the log on a compile error.
    fn compile_to_ptx(&self, name: &str, src: &str, options: &[String]) -> Result<String, String> {
        let cstr = |s: &str| CString::new(s).map_err(|_| format!("{name}: NUL byte in input"));
        let (c_src, c_name) = (cstr(src)?, cstr(name)?);
        let (header, header_name) = (cstr(COMMON_HEADER)?, cstr("common.cuh")?);
        let c_options = options.iter().map(|o| cstr(o)).collect::<Result<Vec<_>, _>>()?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
        let mut program: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer is a live NUL-terminated string (or an array of one such
        // pointer, length 1) for the duration of the call; NVRTC copies what it keeps.
        let code = unsafe {
            (self.create)(
                &mut program,
                c_src.as_ptr(),
                c_name.as_ptr(),
                1,
                &header.as_ptr(),
                &header_name.as_ptr(),
            )
        };
        self.check("nvrtcCreateProgram", code).map_err(|e| e.to_string())?;
        let result = self.compile_program(program, &option_ptrs);
        // SAFETY: `program` was created above and is destroyed exactly once, here.
        unsafe { (self.destroy)(&mut program) };
        result
    }

    fn compile_program(
        &self,
        program: NvrtcProgram,
        options: &[*const c_char],
    ) -> Result<String, String> {
        let count = c_int::try_from(options.len()).map_err(|e| e.to_string())?;
        // SAFETY: `program` is a live program; `options` holds `count` valid C strings.
        let code = unsafe { (self.compile)(program, count, options.as_ptr()) };
        if code != 0 {
            let log = self.read(program, self.log_size, self.log).unwrap_or_default();
            let status = self.check("nvrtcCompileProgram", code).err().map(|e| e.to_string());
            return Err(format!("{}\n{log}", status.unwrap_or_default()));
        }
        self.read(program, self.ptx_size, self.ptx).map_err(|e| e.to_string())
    }

    /// Read a size-then-contents output (the log or the PTX) of a program as a string.
    fn read(&self, program: NvrtcProgram, size: SizeFn, get: GetFn) -> Result<String, KernelError> {
        let mut len = 0usize;
        // SAFETY: `program` is live; `len` is a valid out pointer.
        self.check("nvrtcGet*Size", unsafe { size(program, &mut len) })?;
        let mut buf = vec![0u8; len.max(1)];
        // SAFETY: `buf` holds at least the `len` bytes NVRTC said it will write.
        self.check("nvrtcGet*", unsafe { get(program, buf.as_mut_ptr().cast()) })?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(end);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Where compiled PTX is kept between runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// `RILL_KERNEL_CACHE` if set (`off` disables caching), else
    /// `$XDG_CACHE_HOME/rill/kernels`, else `~/.cache/rill/kernels`; disabled if none.
    pub fn from_env() -> KernelCache {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = match var("RILL_KERNEL_CACHE") {
            Some(dir) if dir == Path::new("off") => None,
            Some(dir) => Some(dir),
            None => var("XDG_CACHE_HOME")
                .or_else(|| var("HOME").map(|home| home.join(".cache")))
                .map(|cache| cache.join("rill/kernels")),
        };
        KernelCache { dir }
    }

    pub fn at(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: Some(dir.into()) }
    }

    /// Always compile.
    pub fn disabled() -> KernelCache {
        KernelCache { dir: None }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn load(&self, file: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.as_ref()?.join(file)).ok()?;
        // A truncated file (a crash mid-write before the rename existed) is not PTX.
        text.contains(".version").then_some(text)
    }

    fn store(&self, file: &str, ptx: &str) {
        let Some(dir) = &self.dir else { return };
        // Written beside, then renamed: concurrent start-ups never read half a file.
        let tmp = dir.join(format!("{file}.{}.tmp", std::process::id()));
        let ok = std::fs::create_dir_all(dir).is_ok()
            && std::fs::write(&tmp, ptx).is_ok()
            && std::fs::rename(&tmp, dir.join(file)).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The NVRTC options every source is compiled with for `arch` (e.g. 90 for sm_90).
pub fn options(arch: u32, toolkit: &Toolkit) -> Vec<String> {
    vec![
        format!("--gpu-architecture=compute_{arch}"),
        "-std=c++17".to_string(),
        format!("--include-path={}", toolkit.include.display()),
        // Every function is a device function unless marked otherwise (no host code).
        "-default-device".to_string(),
        // Source line info for the profiler (ncu), at no runtime cost.
        "-lineinfo".to_string(),
        // The KV cache's block size, defined once (rill_proto::BLOCK_SIZE).
        format!("-DRILL_BLOCK_SIZE={}", rill_proto::BLOCK_SIZE),
        // No --use_fast_math: exact division, sqrt and expf keep parity with the CPU device.
    ]
}

/// Compile the source `src_name` of [`SOURCES`] to PTX for `arch`, through `cache`.
pub fn compile_ptx(
    src_name: &str,
    arch: u32,
    toolkit: &Toolkit,
    cache: &KernelCache,
) -> Result<Ptx, KernelError> {
    let (_, src) = SOURCES
        .iter()
        .find(|(name, _)| *name == src_name)
        .ok_or_else(|| KernelError::MissingSource(src_name.to_string()))?;
    compile_source(src_name, src, arch, toolkit, cache).map(Ptx::from_src)
}

/// Compile any source text (which may `#include "common.cuh"`) to PTX text for `arch`.
pub fn compile_source(
    name: &str,
    src: &str,
    arch: u32,
    toolkit: &Toolkit,
    cache: &KernelCache,
) -> Result<String, KernelError> {
    let nvrtc = Nvrtc::load(toolkit)?;
    let (major, minor) = nvrtc.version()?;
    let options = options(arch, toolkit);
    let key = fnv1a64(&[
        CACHE_FORMAT,
        name,
        src,
        COMMON_HEADER,
        &arch.to_string(),
        &format!("{major}.{minor}"),
        &options.join("\n"),
    ]);
    let stem = name.strip_suffix(".cu").unwrap_or(name);
    let file = format!("{stem}-sm{arch}-{key:016x}.ptx");
    if let Some(ptx) = cache.load(&file) {
        return Ok(ptx);
    }
    let ptx = nvrtc.compile_to_ptx(name, src, &options).map_err(|log| KernelError::Compile {
        source_name: name.to_string(),
        arch,
        log,
    })?;
    cache.store(&file, &ptx);
    Ok(ptx)
}

/// FNV-1a 64 over the parts, each followed by a separator byte so that moving text
/// between parts changes the hash.
fn fnv1a64(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Entry-point names a PTX module defines (`.entry name(`), in order.
pub fn entry_points(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let rest = line.split(".entry ").nth(1)?;
            let name = rest.split(|c: char| c == '(' || c.is_whitespace()).next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// What ptxas says about one function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionReport {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_bytes: u32,
    pub shared_bytes: u32,
}

/// Assemble `ptx` for `sm_<arch>` with `ptxas -v` and report every function.
pub fn ptxas_report(
    ptx: &str,
    arch: u32,
    toolkit: &Toolkit,
) -> Result<Vec<FunctionReport>, KernelError> {
    let ptxas = toolkit.ptxas.as_ref().ok_or_else(|| {
        KernelError::Toolkit(format!(
            "no ptxas in {} (the nvidia-cuda-nvcc-cu12 wheel carries one; \
             scripts/cuda_wheels.sh installs it)",
            toolkit.origin
        ))
    })?;
    let dir = tempfile::tempdir().map_err(|e| KernelError::Ptxas(format!("temp dir: {e}")))?;
    let input = dir.path().join("kernel.ptx");
    std::fs::write(&input, ptx).map_err(|e| KernelError::Ptxas(format!("write PTX: {e}")))?;
    let output = std::process::Command::new(ptxas)
        .arg(format!("-arch=sm_{arch}"))
        .arg("-v")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("kernel.cubin"))
        .output()
        .map_err(|e| KernelError::Ptxas(format!("cannot run {}: {e}", ptxas.display())))?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(KernelError::Ptxas(format!(
            "{} failed for sm_{arch}:\n{text}",
            ptxas.display()
        )));
    }
    Ok(parse_ptxas(&text))
}

/// Parse `ptxas -v` output: a "Compiling entry function 'name'" or "Function properties
/// for name" line opens a function; the stack/spill and "Used N registers" lines fill it.
fn parse_ptxas(text: &str) -> Vec<FunctionReport> {
    let mut reports: Vec<FunctionReport> = Vec::new();
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let head = &line[..line.find(unit)?];
        head.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    for line in text.lines() {
        let name = line
            .split_once("Compiling entry function '")
            .and_then(|(_, rest)| rest.split('\'').next())
            .or_else(|| line.split_once("Function properties for ").map(|(_, n)| n.trim()));
        if let Some(name) = name {
            if reports.last().is_none_or(|r| r.name != name) {
                reports.push(FunctionReport { name: name.to_string(), ..Default::default() });
            }
            continue;
        }
        let Some(current) = reports.last_mut() else { continue };
        if line.contains("spill stores") {
            current.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            current.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            current.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains(" registers") {
            current.registers = number_before(line, " registers").unwrap_or(0);
            current.shared_bytes = number_before(line, " bytes smem").unwrap_or(0);
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'rms_norm_f32' for 'sm_80'
ptxas info    : Function properties for rms_norm_f32
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 18 registers, 128 bytes smem, 380 bytes cmem[0]
ptxas info    : Compiling entry function 'rope' for 'sm_80'
ptxas info    : Function properties for rope
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, 376 bytes cmem[0]
";
        let reports = parse_ptxas(text);
        assert_eq!(
            reports,
            vec![
                FunctionReport {
                    name: "rms_norm_f32".into(),
                    registers: 18,
                    spill_stores: 4,
                    spill_loads: 12,
                    stack_bytes: 8,
                    shared_bytes: 128,
                },
                FunctionReport { name: "rope".into(), registers: 12, ..Default::default() },
            ]
        );
    }

    #[test]
    fn finds_entry_points() {
        let ptx = ".visible .entry rms_norm_f32(\n\t.param .u64 a\n)\n.entry rope (\n";
        assert_eq!(entry_points(ptx), ["rms_norm_f32", "rope"]);
    }

    #[test]
    fn cache_key_separates_parts() {
        assert_ne!(fnv1a64(&["ab", "c"]), fnv1a64(&["a", "bc"]));
        // Fixed, so keys survive across builds and platforms.
        assert_eq!(fnv1a64(&[]), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn cache_round_trips_and_rejects_junk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::at(dir.path());
        assert_eq!(cache.load("x.ptx"), None);
        cache.store("x.ptx", ".version 8.8\n.target sm_80\n");
        assert_eq!(cache.load("x.ptx").as_deref(), Some(".version 8.8\n.target sm_80\n"));
        std::fs::write(dir.path().join("y.ptx"), "garbage").unwrap();
        assert_eq!(cache.load("y.ptx"), None);
        assert_eq!(KernelCache::disabled().load("x.ptx"), None);
    }
}
