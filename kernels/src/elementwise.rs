//! Launchers for `embedding.cu`, `activation.cu` and `elementwise.cu`: the gather, the
//! MLP activation, and the data movement between GEMMs (bias, residual add, column split,
//! row gather, f32 → bf16/f16 casts of GEMM inputs).
//!
//! Embedding is one block per row; the rest are flat grid-stride loops (see the sources'
//! header comments), launched with [`Kernels::flat_grid`]. Index buffers (tokens, rows) are
//! read on the device, so their values cannot be checked here: the kernels turn an
//! out-of-range index into a zero row instead of an out-of-bounds read.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use crate::launch::{bind, check_len, product, row_grid, to_i32, to_u32};
use crate::{KernelError, Kernels, WeightRef};

/// The launch of `embed_*`: one block per row, a thread per column (at most 256).
pub fn embed_config(rows: usize, hidden: usize) -> Result<LaunchConfig, KernelError> {
    row_grid("embed", rows, hidden, 1, 256)
}

impl Kernels {
    /// `out[r] = table[tokens[r]]` widened to f32, for `rows` tokens; `table` is
    /// `[vocab, hidden]`.
    #[allow(clippy::too_many_arguments)]
    pub fn embed(
        &self,
        s: &CudaStream,
        table: WeightRef<'_>,
        hidden: usize,
        tokens: &impl DevicePtr<u32>,
        rows: usize,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "embed";
        if hidden == 0 || !table.len().is_multiple_of(hidden) {
            let detail = format!("table of {} values is not [vocab, {hidden}]", table.len());
            return Err(KernelError::Shape { op: OP, detail });
        }
        let vocab = to_u32(OP, "vocab", table.len() / hidden)?;
        check_len(OP, "tokens", tokens.len(), rows)?;
        check_len(OP, "out", out.len(), product(OP, rows, hidden)?)?;
        if rows == 0 {
            return Ok(());
        }
        let cfg = embed_config(rows, hidden)?;
        let hidden = to_i32(OP, "hidden", hidden)?;
        bind(s)?;
        let f = self.function(&format!("embed_{}", table.suffix()))?;
        let (table, _table) = table.ptr(s);
        let (tokens, _tokens) = tokens.device_ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&table).arg(&tokens).arg(&out).arg(&hidden).arg(&vocab);
        // SAFETY: the arguments match `embed_T(const T*, const unsigned*, float*, int,
        // unsigned)`; block r reads tokens[r] (r < rows <= tokens.len()) and, only when that
        // id is < vocab, one table row inside the table; it writes row r of out, inside
        // out's checked length. out is borrowed exclusively, so it aliases no input.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[r][c] = silu(gate) * up` with `gate_up = [gate | up]`, `[rows, 2 * cols]`.
    pub fn silu_mul(
        &self,
        s: &CudaStream,
        gate_up: &impl DevicePtr<f32>,
        rows: usize,
        cols: usize,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "silu_mul";
        let n = product(OP, rows, cols)?;
        check_len(OP, "gate_up", gate_up.len(), product(OP, n, 2)?)?;
        check_len(OP, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.flat_grid(n);
        let (cols, n) = (to_i32(OP, "cols", cols)?, n as u64);
        bind(s)?;
        let f = self.function("silu_mul")?;
        let (gate_up, _gate_up) = gate_up.device_ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&gate_up).arg(&out).arg(&cols).arg(&n);
        // SAFETY: the arguments match `silu_mul(const float*, float*, int, size_t)`; output
        // index i < n = rows * cols reads gate_up at (i / cols) * 2 * cols + i % cols and
        // that + cols, both < 2 * n <= gate_up.len(), and writes out[i], i < out.len();
        // out is borrowed exclusively, so it does not alias gate_up.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `x[r][c] += bias[c]` for `rows` rows of `cols` columns.
    pub fn add_bias(
        &self,
        s: &CudaStream,
        x: &mut impl DevicePtrMut<f32>,
        rows: usize,
        cols: usize,
        bias: WeightRef<'_>,
    ) -> Result<(), KernelError> {
        const OP: &str = "add_bias";
        let n = product(OP, rows, cols)?;
        check_len(OP, "x", x.len(), n)?;
        crate::launch::check_exact(OP, "bias", bias.len(), cols)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.flat_grid(n);
        let (cols, n) = (to_i32(OP, "cols", cols)?, n as u64);
        bind(s)?;
        let f = self.function(&format!("add_bias_{}", bias.suffix()))?;
        let (x, _x) = x.device_ptr_mut(s);
        let (bias, _bias) = bias.ptr(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&bias).arg(&cols).arg(&n);
        // SAFETY: the arguments match `add_bias_T(float*, const T*, int, size_t)`; index
        // i < n <= x.len() and bias index i % cols < cols = bias.len(); x is borrowed
        // exclusively and bias is a different (weight) buffer.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `x[i] += y[i]` for the first `n` values.
    pub fn add_assign(
        &self,
        s: &CudaStream,
        x: &mut impl DevicePtrMut<f32>,
        y: &impl DevicePtr<f32>,
        n: usize,
    ) -> Result<(), KernelError> {
        const OP: &str = "add_assign";
        check_len(OP, "x", x.len(), n)?;
        check_len(OP, "y", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.flat_grid(n);
        let n = n as u64;
        bind(s)?;
        let f = self.function("add_assign")?;
        let (x, _x) = x.device_ptr_mut(s);
        let (y, _y) = y.device_ptr(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&y).arg(&n);
        // SAFETY: the arguments match `add_assign(float*, const float*, size_t)`; every
        // index is < n, within both checked lengths; x (exclusive) and y (shared) are
        // distinct buffers.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[r] = x[r][col0 .. col0 + width]` from `x` of `[rows, total_cols]`: one output
    /// of a column-wise split (call once per output).
    #[allow(clippy::too_many_arguments)]
    pub fn split_cols(
        &self,
        s: &CudaStream,
        x: &impl DevicePtr<f32>,
        rows: usize,
        total_cols: usize,
        col0: usize,
        width: usize,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "split_cols";
        if col0.checked_add(width).is_none_or(|end| end > total_cols) {
            let detail = format!("columns {col0}..+{width} outside {total_cols}");
            return Err(KernelError::Shape { op: OP, detail });
        }
        let n = product(OP, rows, width)?;
        check_len(OP, "x", x.len(), product(OP, rows, total_cols)?)?;
        check_len(OP, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.flat_grid(n);
        let total_cols = to_i32(OP, "total_cols", total_cols)?;
        let (col0, width, n) = (to_i32(OP, "col0", col0)?, to_i32(OP, "width", width)?, n as u64);
        bind(s)?;
        let f = self.function("split_cols")?;
        let (x, _x) = x.device_ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&out).arg(&total_cols).arg(&col0).arg(&width).arg(&n);
        // SAFETY: the arguments match `split_cols(const float*, float*, int, int, int,
        // size_t)`; output i < rows * width reads x at r * total_cols + col0 + c with
        // r < rows and col0 + c < total_cols (checked), inside x; out (exclusive) does not
        // alias x.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[i] = x[idx[i]]` for `n` rows of `cols` columns (an index past `x`'s rows gives
    /// a zero row).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(
        &self,
        s: &CudaStream,
        x: &impl DevicePtr<f32>,
        cols: usize,
        idx: &impl DevicePtr<u32>,
        n: usize,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), KernelError> {
        const OP: &str = "gather_rows";
        if cols == 0 {
            return Err(KernelError::Shape { op: OP, detail: "zero columns".to_string() });
        }
        let total = product(OP, n, cols)?;
        check_len(OP, "idx", idx.len(), n)?;
        check_len(OP, "out", out.len(), total)?;
        if total == 0 {
            return Ok(());
        }
        let cfg = self.flat_grid(total);
        let src_rows = to_u32(OP, "rows of x", x.len() / cols)?;
        let (cols, total) = (to_i32(OP, "cols", cols)?, total as u64);
        bind(s)?;
        let f = self.function("gather_rows")?;
        let (x, _x) = x.device_ptr(s);
        let (idx, _idx) = idx.device_ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&idx).arg(&out).arg(&cols).arg(&src_rows).arg(&total);
        // SAFETY: the arguments match `gather_rows(const float*, const unsigned*, float*,
        // int, unsigned, size_t)`; output i < n * cols reads idx[i / cols] (< n <=
        // idx.len()) and x only at rows < src_rows = x.len() / cols; out is exclusive.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[i] = bf16(x[i])`, rounding to nearest even, for `n` values.
    pub fn cast_f32_to_bf16(
        &self,
        s: &CudaStream,
        x: &impl DevicePtr<f32>,
        n: usize,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<(), KernelError> {
        self.cast("cast_f32_bf16", s, x, n, out)
    }

    /// `out[i] = f16(x[i])`, rounding to nearest even, for `n` values.
    pub fn cast_f32_to_f16(
        &self,
        s: &CudaStream,
        x: &impl DevicePtr<f32>,
        n: usize,
        out: &mut impl DevicePtrMut<f16>,
    ) -> Result<(), KernelError> {
        self.cast("cast_f32_f16", s, x, n, out)
    }

    /// `name` is `cast_f32_bf16` or `cast_f32_f16`, and `T` the matching 16-bit type.
    fn cast<T>(
        &self,
        name: &'static str,
        s: &CudaStream,
        x: &impl DevicePtr<f32>,
        n: usize,
        out: &mut impl DevicePtrMut<T>,
    ) -> Result<(), KernelError> {
        check_len(name, "x", x.len(), n)?;
        check_len(name, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.flat_grid(n);
        let n = n as u64;
        bind(s)?;
        let f = self.function(name)?;
        let (x, _x) = x.device_ptr(s);
        let (out, _out) = out.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&x).arg(&out).arg(&n);
        // SAFETY: the arguments match `cast_f32_{bf16,f16}(const float*, T*, size_t)` with
        // T the 16-bit type the public wrappers pair with `name`; indices < n are inside
        // both checked lengths; out (exclusive, a different element type) aliases nothing.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
