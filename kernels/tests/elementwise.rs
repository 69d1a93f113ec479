//! The elementwise kernels on a real GPU against small host references: the tests of
//! `common/elementwise.rs` (inputs and tolerances, shared with the emulated tests of
//! `kernels/emu`), run with the launchers on a CUDA stream, and the launchers' own handling
//! of views and short buffers. Without a CUDA device every test prints
//! `SKIP: no CUDA device` and passes; with one but no NVRTC toolkit they skip too, unless
//! `RILL_REQUIRE_NVRTC=1`.

mod common;

use common::elementwise::{self as cases, Elementwise, Half};
use common::reference::{HostWeights, Weight, assert_close, random, rms_norm_ref};
use common::{Gpu, down, gpu, on_gpu, up, zeros};
use half::{bf16, f16};
use rill_kernels::cudarc::driver::CudaSlice;
use rill_kernels::{KernelError, WeightRef};

/// A weight on the device, in its dtype.
enum DevWeight {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl DevWeight {
    fn new(gpu: &Gpu, w: Weight) -> DevWeight {
        match w {
            Weight::F32(w) => DevWeight::F32(up(gpu, w)),
            Weight::Bf16(w) => DevWeight::Bf16(up(gpu, w)),
            Weight::F16(w) => DevWeight::F16(up(gpu, w)),
        }
    }

    fn get(&self) -> WeightRef<'_> {
        match self {
            DevWeight::F32(w) => w.into(),
            DevWeight::Bf16(w) => w.into(),
            DevWeight::F16(w) => w.into(),
        }
    }
}

impl Elementwise for Gpu {
    fn rms_norm(&self, x: &[f32], w: Weight, rows: usize, cols: usize, eps: f32) -> Vec<f32> {
        let (w, mut out) = (DevWeight::new(self, w), zeros(self, rows * cols));
        let s = &self.stream;
        self.kernels.rms_norm(s, &up(self, x), w.get(), rows, cols, eps, &mut out).unwrap();
        down(self, &out)
    }

    fn add_rms_norm(
        &self,
        x: &[f32],
        y: &[f32],
        w: Weight,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let (mut dx, dy, w) = (up(self, x), up(self, y), DevWeight::new(self, w));
        let mut out = zeros(self, rows * cols);
        let s = &self.stream;
        self.kernels.add_rms_norm(s, &mut dx, &dy, w.get(), rows, cols, eps, &mut out).unwrap();
        (down(self, &dx), down(self, &out))
    }

    fn rope(
        &self,
        x: &[f32],
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Vec<f32> {
        let (mut dx, dcos, dsin) = (up(self, x), up(self, cos), up(self, sin));
        self.kernels.rope(&self.stream, &mut dx, rows, heads, head_dim, &dcos, &dsin).unwrap();
        down(self, &dx)
    }

    fn silu_mul(&self, gate_up: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = zeros(self, rows * cols);
        self.kernels.silu_mul(&self.stream, &up(self, gate_up), rows, cols, &mut out).unwrap();
        down(self, &out)
    }

    fn embed(&self, table: Weight, hidden: usize, tokens: &[u32]) -> Vec<f32> {
        let (table, dtokens) = (DevWeight::new(self, table), up(self, tokens));
        let mut out = zeros(self, tokens.len() * hidden);
        let s = &self.stream;
        self.kernels.embed(s, table.get(), hidden, &dtokens, tokens.len(), &mut out).unwrap();
        down(self, &out)
    }

    fn add_bias(&self, x: &[f32], rows: usize, cols: usize, bias: Weight) -> Vec<f32> {
        let (mut dx, bias) = (up(self, x), DevWeight::new(self, bias));
        self.kernels.add_bias(&self.stream, &mut dx, rows, cols, bias.get()).unwrap();
        down(self, &dx)
    }

    fn add_assign(&self, x: &[f32], y: &[f32]) -> Vec<f32> {
        let mut dx = up(self, x);
        self.kernels.add_assign(&self.stream, &mut dx, &up(self, y), x.len()).unwrap();
        down(self, &dx)
    }

    fn split_cols(
        &self,
        x: &[f32],
        rows: usize,
        total: usize,
        col0: usize,
        width: usize,
    ) -> Vec<f32> {
        let mut out = zeros(self, rows * width);
        let s = &self.stream;
        self.kernels.split_cols(s, &up(self, x), rows, total, col0, width, &mut out).unwrap();
        down(self, &out)
    }

    fn gather_rows(&self, x: &[f32], cols: usize, idx: &[u32]) -> Vec<f32> {
        let (dx, didx) = (up(self, x), up(self, idx));
        let mut out = zeros(self, idx.len() * cols);
        self.kernels.gather_rows(&self.stream, &dx, cols, &didx, idx.len(), &mut out).unwrap();
        down(self, &out)
    }

    fn cast(&self, x: &[f32], to: Half) -> Vec<u16> {
        let (s, dx, n) = (&self.stream, up(self, x), x.len());
        match to {
            Half::Bf16 => {
                let mut out = s.alloc_zeros::<bf16>(n).unwrap();
                self.kernels.cast_f32_to_bf16(s, &dx, n, &mut out).unwrap();
                down(self, &out).iter().map(|v| v.to_bits()).collect()
            }
            Half::F16 => {
                let mut out = s.alloc_zeros::<f16>(n).unwrap();
                self.kernels.cast_f32_to_f16(s, &dx, n, &mut out).unwrap();
                down(self, &out).iter().map(|v| v.to_bits()).collect()
            }
        }
    }

    fn write_kv(
        &self,
        num_slots: usize,
        (k, v): (&[f32], &[f32]),
        slots: &[u32],
        kv_heads: usize,
        head_dim: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let cache = num_slots * kv_heads * head_dim;
        let (mut k_cache, mut v_cache) = (zeros(self, cache), zeros(self, cache));
        let (dk, dv, dslots) = (up(self, k), up(self, v), up(self, slots));
        let (s, rows) = (&self.stream, slots.len());
        self.kernels
            .write_kv(s, &mut k_cache, &mut v_cache, &dk, &dv, &dslots, rows, kv_heads, head_dim)
            .unwrap();
        (down(self, &k_cache), down(self, &v_cache))
    }
}

#[test]
fn rms_norm_matches_the_host_for_every_weight_dtype() {
    on_gpu(cases::rms_norm_matches_the_host_for_every_weight_dtype);
}

#[test]
fn add_rms_norm_updates_the_residual_and_normalises_it() {
    on_gpu(cases::add_rms_norm_updates_the_residual_and_normalises_it);
}

#[test]
fn rope_rotates_half_pairs_exactly_like_the_cpu() {
    on_gpu(cases::rope_rotates_half_pairs_exactly_like_the_cpu);
}

#[test]
fn silu_mul_gates_the_up_half() {
    on_gpu(cases::silu_mul_gates_the_up_half);
}

#[test]
fn embed_gathers_and_widens_rows_and_zeroes_bad_ids() {
    on_gpu(cases::embed_gathers_and_widens_rows_and_zeroes_bad_ids);
}

#[test]
fn add_bias_adds_the_widened_bias_to_every_row() {
    on_gpu(cases::add_bias_adds_the_widened_bias_to_every_row);
}

#[test]
fn add_assign_covers_more_than_one_grid_wave() {
    on_gpu(cases::add_assign_covers_more_than_one_grid_wave);
}

#[test]
fn split_cols_takes_each_output_of_a_fused_projection() {
    on_gpu(cases::split_cols_takes_each_output_of_a_fused_projection);
}

#[test]
fn gather_rows_picks_rows_and_zeroes_bad_indices() {
    on_gpu(cases::gather_rows_picks_rows_and_zeroes_bad_indices);
}

#[test]
fn casts_round_to_nearest_even_like_half() {
    on_gpu(cases::casts_round_to_nearest_even_like_half);
}

#[test]
fn write_kv_stores_rows_at_slots_and_skips_padding() {
    on_gpu(cases::write_kv_stores_rows_at_slots_and_skips_padding);
}

#[test]
fn launchers_accept_views_and_reject_short_buffers() {
    let Some(gpu) = gpu() else { return };
    let s = &gpu.stream;
    let (rows, cols) = (2, 96);
    // A fixed buffer holding more rows than the step uses, read and written through views.
    let x = random(8 * cols, 19);
    let dx = up(gpu, &x);
    let weights = HostWeights::new(&random(cols, 20));
    let (w, w_bf16) = (up(gpu, &weights.widened[0]), up(gpu, &weights.bf16));
    let mut out = zeros(gpu, 8 * cols);
    let view = dx.slice(cols..3 * cols);
    let mut out_view = out.slice_mut(..rows * cols);
    gpu.kernels.rms_norm(s, &view, WeightRef::F32(&w), rows, cols, 1e-5, &mut out_view).unwrap();
    let got = down(gpu, &out);
    let want = rms_norm_ref(&x[cols..3 * cols], &weights.widened[0], cols, 1e-5);
    assert_close("rms_norm through views", &got[..rows * cols], &want);
    assert!(got[rows * cols..].iter().all(|&v| v == 0.0), "nothing past the view is written");

    let mut short = zeros(gpu, rows * cols - 1);
    let err = gpu.kernels.rms_norm(s, &dx, WeightRef::F32(&w), rows, cols, 1e-5, &mut short);
    assert!(matches!(err, Err(KernelError::Shape { op: "rms_norm", .. })), "{err:?}");
    let w_bf16 = WeightRef::Bf16(&w_bf16);
    let err = gpu.kernels.rms_norm(s, &dx, w_bf16, rows, cols + 1, 1e-5, &mut out);
    assert!(matches!(err, Err(KernelError::Shape { .. })), "weight length: {err:?}");
    // Columns past the fused projection's width.
    let (total, mut out) = (4 * cols, zeros(gpu, rows * 2));
    let err = gpu.kernels.split_cols(s, &dx, rows, total, total - 1, 2, &mut out);
    assert!(matches!(err, Err(KernelError::Shape { .. })), "{err:?}");
}
