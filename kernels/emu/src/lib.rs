//! Rill's CUDA kernels on the CPU, for tests on machines without a GPU (CI among them).
//!
//! `build.rs` compiles the real `kernels/cuda/*.cu` sources as host C++ with g++, against a
//! small emulation of the CUDA language (`cxx/emu.h`, `cxx/include/cuda_{bf16,fp16}.h`) and
//! a runtime (`cxx/*.cc`), and finds every `__global__` function; [`launch`] runs one by name
//! over a grid, on [`DevBuf`]s standing in for device memory. The tests compare the results
//! with host references, using the Rust launchers' own planning (`rill_kernels::attention::
//! plan` and the `*_config` functions) to choose the entry point, grid, block and shared
//! memory exactly as the GPU path does.
//!
//! # The model
//!
//! - Every CUDA thread of a CTA exists at once, as a fiber on the calling thread; CTAs run one
//!   after another, in a shuffled order. A fiber runs until it reaches `__syncthreads` or a
//!   warp collective, then the next one runs: a random ready lane of the same warp, else of a
//!   random other warp (seeded by the launch's shape; `RILL_EMU_SEED` picks other orders).
//!   Warps thus run ahead of each other as far as barriers allow, and lanes interleave in no
//!   fixed order, so a missing barrier shows up as stale or poisoned data.
//! - `__syncthreads` waits for every thread of the block, at the same call site; a barrier
//!   after some threads exited, or threads at different barriers, fail the launch.
//! - Shuffles (all four modes, with widths), `__ballot_sync`, `__syncwarp` and
//!   `mma.sync.m16n8k16` complete when every lane of the mask has arrived with the same
//!   operation and mask; lanes exchange real values with the PTX ISA's lane arithmetic and
//!   fragment layouts. A mask that leaves out the caller, names lanes that do not exist (a
//!   partial warp) or exited, or a shuffle reading a lane outside the mask fail the launch
//!   with the block, thread and source line. So does a deadlock (no thread can run) and
//!   `__trap()`. A thread that loops without ever reaching a barrier or collective is caught
//!   by a watchdog that aborts the process after 5 seconds (`RILL_EMU_WATCHDOG_SECONDS`).
//! - `blockIdx`, `threadIdx`, `blockDim`, `gridDim` are per CTA and thread. `__shared__`
//!   arrays are per CTA (they keep the previous CTA's contents, as shared memory does);
//!   dynamic shared memory is exactly the launch's size and starts as 0xff bytes (NaN).
//!   Launch limits are checked: block size against `__launch_bounds__` and 1024, grid
//!   dimensions, 227 KB of dynamic shared memory, and each argument's size and kind against
//!   the kernel's parameter.
//! - bf16 and f16 conversions round to nearest even, bit for bit as the GPU does; f32 math
//!   is IEEE single precision without FMA contraction (`fmaf` is fused).
//! - Built with AddressSanitizer and UndefinedBehaviorSanitizer: out-of-bounds or misaligned
//!   accesses to buffers and dynamic shared memory, and out-of-bounds indexing of local and
//!   static `__shared__` arrays, stop the test binary with a report.
//!
//! # What it cannot catch
//!
//! Timing and performance (coalescing, bank conflicts, occupancy; register pressure and
//! spills are `kernels/tests/nvrtc.rs`'s business), races that only real parallel execution
//! shows (a fiber switches only at barriers and collectives, so memory accesses between two
//! of them are atomic; races between CTAs are not seen), the memory model and the orders a
//! real scheduler picks, the last bits of `expf` and the fast-math intrinsics (computed
//! accurately here), FMA contraction by NVRTC, and the tensor cores' accumulation order.
//! Static `__shared__` arrays are not poisoned (the compiler gives no way to find them): a read
//! before any write sees the previous CTA's values (zeros at first), which shows only when
//! those are wrong, and overflowing one through a pointer (not an index) goes unseen.
//! It runs on x86-64 Linux (the fiber switch is assembly); elsewhere, or without g++,
//! [`launch`] fails with the reason.

use std::alloc::Layout;
use std::ffi::c_void;
use std::ptr::NonNull;

pub use rill_kernels::cudarc::driver::LaunchConfig;

/// A kernel argument, as the kernel's parameter types it: a pointer (from a [`DevBuf`]),
/// `int`, `unsigned`, `size_t`, or `float`. The launch checks each against the kernel.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(*const c_void),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
}

impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}

impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}

impl From<u64> for Arg {
    fn from(v: u64) -> Arg {
        Arg::U64(v)
    }
}

impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}

impl<T: Copy> From<&DevBuf<T>> for Arg {
    fn from(buf: &DevBuf<T>) -> Arg {
        Arg::Ptr(buf.ptr.as_ptr().cast())
    }
}

/// "Device memory": an allocation of exactly `len` elements (so AddressSanitizer flags the
/// first element past it), aligned to 256 bytes like `cudaMalloc`'s.
#[derive(Debug)]
pub struct DevBuf<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
}

impl<T: Copy> DevBuf<T> {
    fn layout(len: usize) -> Layout {
        let bytes = std::mem::size_of::<T>().checked_mul(len).expect("buffer size");
        Layout::from_size_align(bytes.max(1), 256).expect("buffer layout")
    }

    pub fn from_slice(data: &[T]) -> DevBuf<T> {
        assert!(std::mem::size_of::<T>() > 0, "no zero-sized elements");
        let layout = Self::layout(data.len());
        // SAFETY: the layout's size is nonzero.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<T>();
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: the new allocation holds data.len() elements of T, aligned for T (256 is a
        // multiple of any element alignment), and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
        DevBuf { ptr, len: data.len() }
    }

    pub fn zeros(len: usize) -> DevBuf<T>
    where
        T: Default,
    {
        Self::from_slice(&vec![T::default(); len])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer argument to element `offset` (at most `len`) of the buffer.
    pub fn at(&self, offset: usize) -> Arg {
        assert!(offset <= self.len, "offset {offset} past a buffer of {}", self.len);
        Arg::Ptr(self.ptr.as_ptr().wrapping_add(offset).cast())
    }

    pub fn to_vec(&self) -> Vec<T> {
        // SAFETY: `ptr` holds `len` initialised elements (from_slice copied them; a kernel
        // writes only values of T through the pointer) and no launch is running: launches
        // are synchronous and the buffer is not shared with another thread (`!Sync`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }.to_vec()
    }
}

impl<T: Copy> Drop for DevBuf<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in from_slice with this same layout, and freed only here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), Self::layout(self.len)) };
    }
}

/// Run the kernel `name` of `kernels/cuda` over `cfg`'s grid with `args`; `Err` carries the
/// emulator's message (a bad launch, a misused barrier or collective, a trap, a deadlock).
///
/// # Safety
///
/// As for a real launch: the arguments must be what the kernel expects (their sizes and
/// kinds are checked, not their meaning), and every access the kernel makes through a
/// pointer argument must stay inside the [`DevBuf`] it came from, which must be alive. An
/// access that does not is reported by AddressSanitizer, which then ends the process.
pub unsafe fn launch(name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<(), String> {
    #[cfg(rill_emu_unavailable)]
    {
        let _ = (name, cfg, args);
        Err(format!("the kernel emulator was not built: {}", env!("RILL_EMU_UNAVAILABLE")))
    }
    #[cfg(not(rill_emu_unavailable))]
    // SAFETY: the caller's contract above.
    unsafe {
        ffi::launch(name, cfg, args)
    }
}

/// The C interface of `cxx/registry.cc`.
#[cfg(not(rill_emu_unavailable))]
mod ffi {
    use std::ffi::{CStr, CString, c_char, c_void};

    use super::{Arg, LaunchConfig};

    unsafe extern "C" {
        fn rill_emu_launch(
            name: *const c_char,
            grid: *const u32,
            block: *const u32,
            smem: usize,
            args: *const RawArg,
            n: usize,
        ) -> *mut c_char;
        fn rill_emu_free(message: *mut c_char);
    }

    /// `cxx/runtime.h`'s `rill_emu::Arg`.
    #[repr(C)]
    struct RawArg {
        data: *const c_void,
        size: usize,
        kind: c_char,
    }

    impl Arg {
        fn raw(&self) -> RawArg {
            let (data, size, kind): (*const c_void, usize, u8) = match self {
                Arg::Ptr(p) => ((p as *const *const c_void).cast(), 8, b'p'),
                Arg::I32(v) => ((v as *const i32).cast(), 4, b'i'),
                Arg::U32(v) => ((v as *const u32).cast(), 4, b'u'),
                Arg::U64(v) => ((v as *const u64).cast(), 8, b'u'),
                Arg::F32(v) => ((v as *const f32).cast(), 4, b'f'),
            };
            RawArg { data, size, kind: kind as c_char }
        }
    }

    /// [`super::launch`], with the same contract.
    pub(super) unsafe fn launch(name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<(), String> {
        let name = CString::new(name).map_err(|_| format!("{name:?}: a NUL in the name"))?;
        let grid = [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2];
        let block = [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2];
        let raw: Vec<RawArg> = args.iter().map(Arg::raw).collect();
        // SAFETY: the strings and arrays are live for the call and hold what the C side
        // reads (three dimensions each, `raw.len()` arguments pointing into `args`); the
        // kernel's memory accesses are the caller's contract.
        let message = unsafe {
            rill_emu_launch(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_mem_bytes as usize,
                raw.as_ptr(),
                raw.len(),
            )
        };
        if message.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null result is a NUL-terminated string from strdup, released once
        // with rill_emu_free after being copied.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        // SAFETY: as above.
        unsafe { rill_emu_free(message) };
        Err(text)
    }
}
