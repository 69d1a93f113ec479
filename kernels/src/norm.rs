//! Launchers for `norm.cu` (RMSNorm, fused residual add + RMSNorm) and `rope.cu` (rotary
//! embedding): the per-row ops around attention.
//!
//! All three run one block per row (the design is in each source's header comment); the
//! launchers check that every buffer covers `rows` rows and that the weight is exactly one
//! row long, then size the block from the row width. Argument lists mirror the kernels'
//! (the engine's shared API), hence `too_many_arguments`.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use crate::launch::{bind, check_exact, check_len, product, row_grid, to_i32};
use crate::{KernelError, Kernels, WeightRef};

/// The launch of `rms_norm_*` and `add_rms_norm_*`: one block per row, about one thread per
/// four columns.
pub fn rms_norm_config(rows: usize, cols: usize) -> Result<LaunchConfig, KernelError> {
    row_grid("rms_norm", rows, cols, 4, 1024)
}

/// The launch of `rope`: one block per row, a thread per rotation pair (at most 256).
pub fn rope_config(
    rows: usize,
    heads: usize,
    head_dim: usize,
) -> Result<LaunchConfig, KernelError> {
    row_grid("rope", rows, product("rope", heads, head_dim / 2)?, 1, 256)
}

impl Kernels {
    /// `out[r] = x[r] / rms(x[r]) * w` for `rows` rows of `cols` columns.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        s: &CudaStream,
        x: &impl DevicePtr<f32>,
        w: WeightRef<'_>,
        rows: usize,
        cols: usize,
        eps: f32,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "rms_norm";
        let n = product(OP, rows, cols)?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_exact(OP, "weight", w.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = rms_norm_config(rows, cols)?;
        let cols = to_i32(OP, "cols", cols)?;
        bind(s)?;
        let f = self.function(&format!("rms_norm_{}", w.suffix()))?;
        let (x, _x) = x.device_ptr(s);
        let (w, _w) = w.ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&w).arg(&out).arg(&cols).arg(&eps);
        // SAFETY: the arguments match `rms_norm_T(const float*, const T*, float*, int,
        // float)` with T the weight's dtype (the suffix picks the instantiation); grid.x =
        // rows and each block touches only its row, so reads stay within x's and w's
        // checked lengths and writes within out's; x and out are distinct buffers (one is
        // borrowed shared, the other exclusively), as the kernel's __restrict__ assumes.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The residual stream update of a pre-norm layer: `x += y`, then
    /// `out = rms_norm(x) * w`, in one pass.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        s: &CudaStream,
        x: &mut impl DevicePtrMut<f32>,
        y: &impl DevicePtr<f32>,
        w: WeightRef<'_>,
        rows: usize,
        cols: usize,
        eps: f32,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "add_rms_norm";
        let n = product(OP, rows, cols)?;
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "y", y.len(), n)?;
        check_len(OP, "out", out.len(), n)?;
        check_exact(OP, "weight", w.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = rms_norm_config(rows, cols)?;
        let cols = to_i32(OP, "cols", cols)?;
        bind(s)?;
        let f = self.function(&format!("add_rms_norm_{}", w.suffix()))?;
        let (x, _x) = x.device_ptr_mut(s);
        let (y, _y) = y.device_ptr(s);
        let (w, _w) = w.ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&y).arg(&w).arg(&out).arg(&cols).arg(&eps);
        // SAFETY: the arguments match `add_rms_norm_T(float*, const float*, const T*,
        // float*, int, float)`; one block per row within the checked lengths of x, y, out
        // and w; x, y and out are three distinct buffers (two exclusive borrows and a
        // shared one), as __restrict__ requires.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Rotate each head of each row in place (HF half rotation): `x` is
    /// `[rows, heads * head_dim]`, `cos`/`sin` are `[rows, head_dim / 2]`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        s: &CudaStream,
        x: &mut impl DevicePtrMut<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "rope";
        if !head_dim.is_multiple_of(2) {
            return Err(KernelError::Shape { op: OP, detail: format!("odd head_dim {head_dim}") });
        }
        let half = head_dim / 2;
        let pairs = product(OP, heads, half)?;
        check_len(OP, "x", x.len(), product(OP, rows, product(OP, heads, head_dim)?)?)?;
        check_len(OP, "cos", cos.len(), product(OP, rows, half)?)?;
        check_len(OP, "sin", sin.len(), product(OP, rows, half)?)?;
        if rows == 0 || pairs == 0 {
            return Ok(());
        }
        let cfg = rope_config(rows, heads, head_dim)?;
        let heads = to_i32(OP, "heads", heads)?;
        let head_dim = to_i32(OP, "head_dim", head_dim)?;
        bind(s)?;
        let f = self.function("rope")?;
        let (x, _x) = x.device_ptr_mut(s);
        let (cos, _cos) = cos.device_ptr(s);
        let (sin, _sin) = sin.device_ptr(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&cos).arg(&sin).arg(&heads).arg(&head_dim);
        // SAFETY: the arguments match `rope(float*, const float*, const float*, int, int)`;
        // block r reads and writes only row r of x (heads * head_dim values) and reads
        // row r of cos and sin (head_dim / 2 values), all within the checked lengths; x is
        // borrowed exclusively, so it cannot alias cos or sin.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
