//! Builds the kernel emulator: every `kernels/cuda/*.cu` source (and `cxx/selftest.cu`)
//! compiled as host C++ against the CUDA emulation in `cxx/`, plus the emulator's runtime,
//! into a static library that this crate's tests link.
//!
//! Entry points are found, not listed: each source is first preprocessed with `RILL_EMU_SCAN`
//! defined, which turns `__global__` and `__launch_bounds__(...)` into markers, and every
//! `rill_emu_kernel void [rill_emu_bounds(...)] name(` in the output is a kernel. A generated
//! translation unit per source then includes it and tables its kernels (name, launch bound,
//! argument binder); `cxx/registry.cc` looks names up in those tables.
//!
//! Everything is compiled with AddressSanitizer and UndefinedBehaviorSanitizer (whose
//! runtimes the crate links): out-of-bounds accesses to buffers and dynamic shared
//! memory, misaligned vector loads (a GPU's "misaligned address"), out-of-bounds indexing of
//! local and static shared arrays, and shifts or float-to-int casts the GPU defines
//! differently from x86 stop the test with a report, as compute-sanitizer would.
//!
//! Without a C++ compiler, or on a target other than x86-64 Linux (the fiber switch is
//! x86-64 assembly), nothing is compiled: the crate is built with `rill_emu_unavailable` and
//! every launch fails with the reason.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SANITIZE: &str = "-fsanitize=address,undefined";
const RUNTIME: &[&str] =
    &["scheduler.cc", "warp.cc", "mma.cc", "fiber.cc", "watchdog.cc", "registry.cc"];

fn main() {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let (cuda, cxx) = (root.join("../cuda"), root.join("cxx"));
    println!("cargo::rerun-if-changed={}", cuda.display());
    println!("cargo::rerun-if-changed={}", cxx.display());
    println!("cargo::rustc-check-cfg=cfg(rill_emu_unavailable)");
    let out = PathBuf::from(env("OUT_DIR"));
    let build = base_build(&cxx, &out);
    if let Some(why) = unavailable(&build) {
        println!("cargo::warning=the kernel emulator is not built: {why}");
        println!("cargo::rustc-cfg=rill_emu_unavailable");
        println!("cargo::rustc-env=RILL_EMU_UNAVAILABLE={why}");
        return;
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&cuda)
        .expect("kernels/cuda")
        .map(|entry| entry.expect("kernels/cuda entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources.push(cxx.join("selftest.cu"));
    let mut files: Vec<PathBuf> = RUNTIME.iter().map(|f| cxx.join(f)).collect();
    let mut stems = Vec::new();
    for source in &sources {
        let stem = source.file_stem().unwrap().to_string_lossy().replace(['-', '.'], "_");
        let kernels = scan(&build, source, &out.join(format!("scan_{stem}.cc")));
        let table = out.join(format!("emu_{stem}.cc"));
        write(&table, &kernel_table(source, &stem, &kernels));
        files.push(table);
        stems.push(stem);
    }
    let list: String = stems.iter().map(|s| format!("RILL_EMU_SOURCE({s})\n")).collect();
    write(&out.join("sources.inc"), &list);

    let objects = compile_all(&build, &files);
    let library = build.try_create_archive("rill_emu", &objects).unwrap_or_else(|e| panic!("{e}"));
    // The sanitizer runtimes, named before every other library so that ASan comes first in
    // the process's library list (rustc links with -nodefaultlibs, so the compiler driver
    // would not add them).
    println!("cargo::rustc-link-lib=dylib=asan");
    println!("cargo::rustc-link-lib=dylib=ubsan");
    cc::emit_link_directives(&build, library);
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The flags every translation unit is compiled with (see the module comment and `emu.h`).
fn base_build(cxx: &Path, out: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(true)
        .include(cxx.join("include"))
        .include(cxx)
        .include(out)
        .define("RILL_EMULATE", None)
        // The KV cache's block size, defined once (as NVRTC gets it).
        .define("RILL_BLOCK_SIZE", rill_proto::BLOCK_SIZE.to_string().as_str())
        .flag("-include")
        .flag(cxx.join("emu.h"))
        .flag(SANITIZE)
        .flag("-fno-sanitize-recover=all")
        .flag("-fno-omit-frame-pointer")
        // One IEEE operation per source operation, as __fmul_rn & co. promise.
        .flag("-ffp-contract=off")
        // Uninitialised locals hold a pattern (NaN-like floats), not convenient zeros.
        .flag("-ftrivial-auto-var-init=pattern")
        // `#pragma unroll` is for NVRTC.
        .flag("-Wno-unknown-pragmas");
    build
}

/// Why the emulator cannot be built here, if it cannot.
fn unavailable(build: &cc::Build) -> Option<String> {
    let (arch, os) = (env("CARGO_CFG_TARGET_ARCH"), env("CARGO_CFG_TARGET_OS"));
    if arch != "x86_64" || os != "linux" {
        return Some(format!("it runs on x86-64 Linux only, not {arch} {os}"));
    }
    let compiler = match build.try_get_compiler() {
        Ok(compiler) => compiler,
        Err(e) => return Some(format!("no C++ compiler: {e}")),
    };
    match compiler.to_command().arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("{} --version failed: {}", compiler.path().display(), out.status)),
        Err(e) => Some(format!(
            "no C++ compiler: {} could not run ({e}); install g++ (or set CXX)",
            compiler.path().display()
        )),
    }
}

/// The kernels of `source`: (name, __launch_bounds__ arguments), from its preprocessed text.
fn scan(build: &cc::Build, source: &Path, wrapper: &Path) -> Vec<(String, String)> {
    write(wrapper, &format!("#include \"{}\"\n", source.display()));
    let text = build
        .clone()
        .define("RILL_EMU_SCAN", None)
        .file(wrapper)
        .try_expand()
        .unwrap_or_else(|e| panic!("preprocessing {}: {e}", source.display()));
    let text = String::from_utf8_lossy(&text);
    let name = source.display();
    let mut kernels = Vec::new();
    for (at, marker) in text.match_indices("rill_emu_kernel") {
        let rest = text[at + marker.len()..].trim_start();
        let context = || rest.chars().take(120).collect::<String>();
        let rest = rest
            .strip_prefix("void")
            .unwrap_or_else(|| {
                panic!("{name}: a __global__ function not returning void: {}", context())
            })
            .trim_start();
        let (bounds, rest) = match rest.strip_prefix("rill_emu_bounds") {
            Some(rest) => parenthesized(rest.trim_start())
                .unwrap_or_else(|| panic!("{name}: unbalanced __launch_bounds__: {}", context())),
            None => ("1024", rest),
        };
        let rest = rest.trim_start();
        let end = rest.find(|c: char| !c.is_alphanumeric() && c != '_').unwrap_or(rest.len());
        let (kernel, after) = rest.split_at(end);
        if kernel.is_empty() || !after.trim_start().starts_with('(') {
            panic!("{name}: cannot read the name of a __global__ function: {}", context());
        }
        kernels.push((kernel.to_string(), bounds.trim().to_string()));
    }
    if kernels.is_empty() {
        panic!("{name}: no __global__ function found");
    }
    kernels
}

/// The contents of the parentheses `text` opens with, and what follows them.
fn parenthesized(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return Some((&text[1..i], &text[i + 1..])),
            ')' => depth -= 1,
            _ if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// A translation unit: the source, then the table of its kernels that registry.cc reads.
fn kernel_table(source: &Path, stem: &str, kernels: &[(String, String)]) -> String {
    let mut text = format!(
        "// Generated by kernels/emu/build.rs: {0} and a table of its kernels.\n\
         #include \"{0}\"\n#include \"runtime.h\"\n\nnamespace {{\n\
         const rill_emu::Entry entries[] = {{\n",
        source.display()
    );
    for (name, bounds) in kernels {
        text += &format!(
            "    {{\"{name}\", rill_emu::launch_bound({bounds}), \
             &rill_emu::launch_entry<&{name}>}},\n"
        );
    }
    text += &format!(
        "}};\n}}  // namespace\n\n\
         extern \"C\" const rill_emu::Entry* rill_emu_entries_{stem}(size_t* n) {{\n\
         \x20   *n = sizeof entries / sizeof entries[0];\n    return entries;\n}}\n"
    );
    text
}

/// Compile `files` to objects, as many at a time as cargo allows jobs.
fn compile_all(build: &cc::Build, files: &[PathBuf]) -> Vec<PathBuf> {
    let jobs = std::env::var("NUM_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(1usize);
    let queue = Mutex::new(files.iter().enumerate());
    let objects = Mutex::new(vec![PathBuf::new(); files.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, files.len()) {
            scope.spawn(|| {
                loop {
                    let Some((i, file)) = queue.lock().unwrap().next() else { return };
                    let object = build
                        .clone()
                        .file(file)
                        .try_compile_intermediates()
                        .unwrap_or_else(|e| panic!("compiling {}: {e}", file.display()));
                    objects.lock().unwrap()[i] = object[0].clone();
                }
            });
        }
    });
    objects.into_inner().unwrap()
}
