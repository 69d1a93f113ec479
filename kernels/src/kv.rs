//! Launcher for `kv_cache.cu`: storing each row's K and V in the paged cache at its slot.
//!
//! The caches are one layer's K and V, `[num_blocks, 16, kv_heads, head_dim]` f32 (NHD),
//! which the kernel treats as `[num_slots, kv_heads * head_dim]`. Slots come from the
//! step plan on the device (`block * 16 + offset`); `u32::MAX` marks a padding row (a CUDA
//! graph bucket larger than the batch) and is skipped, as is any slot past the cache, so a
//! bad slot can lose a row but never write outside the cache.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use crate::launch::{bind, check_len, product, row_grid, to_i32, to_u32};
use crate::{KernelError, Kernels};

/// The slot value meaning "do not write this row".
pub const NO_SLOT: u32 = u32::MAX;

/// The launch of `write_kv`: one block per row, a thread per value of the row's `width`
/// (`kv_heads * head_dim`; at most 256).
pub fn write_kv_config(rows: usize, width: usize) -> Result<LaunchConfig, KernelError> {
    row_grid("write_kv", rows, width, 1, 256)
}

impl Kernels {
    /// `k_cache[slots[r]] = k[r]`, `v_cache[slots[r]] = v[r]` for `rows` rows of
    /// `kv_heads * head_dim` values.
    #[allow(clippy::too_many_arguments)]
    pub fn write_kv(
        &self,
        s: &CudaStream,
        k_cache: &mut impl DevicePtrMut<f32>,
        v_cache: &mut impl DevicePtrMut<f32>,
        k: &impl DevicePtr<f32>,
        v: &impl DevicePtr<f32>,
        slots: &impl DevicePtr<u32>,
        rows: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<(), KernelError> {
        const OP: &str = "write_kv";
        let width = product(OP, kv_heads, head_dim)?;
        if width == 0 || !k_cache.len().is_multiple_of(width) || k_cache.len() != v_cache.len() {
            let detail = format!(
                "caches of {} and {} values are not [slots, {kv_heads} x {head_dim}]",
                k_cache.len(),
                v_cache.len()
            );
            return Err(KernelError::Shape { op: OP, detail });
        }
        let n = product(OP, rows, width)?;
        check_len(OP, "k", k.len(), n)?;
        check_len(OP, "v", v.len(), n)?;
        check_len(OP, "slots", slots.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let num_slots = to_u32(OP, "cache slots", k_cache.len() / width)?;
        let cfg = write_kv_config(rows, width)?;
        let width = to_i32(OP, "kv_heads * head_dim", width)?;
        bind(s)?;
        let f = self.function("write_kv")?;
        let (k_cache, _k_cache) = k_cache.device_ptr_mut(s);
        let (v_cache, _v_cache) = v_cache.device_ptr_mut(s);
        let (k, _k) = k.device_ptr(s);
        let (v, _v) = v.device_ptr(s);
        let (slots, _slots) = slots.device_ptr(s);
        let mut launch = s.launch_builder(f);
        launch.arg(&k_cache).arg(&v_cache).arg(&k).arg(&v).arg(&slots).arg(&width).arg(&num_slots);
        // SAFETY: the arguments match `write_kv(float*, float*, const float*, const float*,
        // const unsigned*, int, unsigned)`; block r reads slots[r] (r < rows <= slots.len())
        // and row r of k and v (inside their checked lengths), and writes one width-long
        // row of each cache only when the slot is < num_slots = cache.len() / width. The
        // two caches are separate exclusive borrows, so neither aliases the other or an
        // input.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
