//! The per-row and grid-stride kernels, emulated: `norm.cu`, `rope.cu`, `activation.cu`,
//! `embedding.cu`, `elementwise.cu` and `kv_cache.cu`, launched with the launchers' own
//! configurations (`rms_norm_config`, `flat_config`, ...), running the tests of
//! `kernels/tests/common/elementwise.rs`, which the GPU tests run too: exact where the kernel
//! does the same rounded operations (copies, widening, single adds, rope's products, casts),
//! 1e-5 relative where a reduction's order or `expf` may differ. Grid-stride kernels run
//! with a small grid cap, so that threads loop.

#[path = "../../tests/common/elementwise.rs"]
mod elementwise;
#[path = "../../tests/common/reference.rs"]
mod reference;

use elementwise::{self as cases, Elementwise, Half};
use half::{bf16, f16};
use reference::Weight;
use rill_kernels::elementwise::embed_config;
use rill_kernels::flat_config;
use rill_kernels::kv::write_kv_config;
use rill_kernels::norm::{rms_norm_config, rope_config};
use rill_kernels_emu::{Arg, DevBuf, LaunchConfig, launch};

/// Grid cap of the grid-stride kernels: far below a GPU's wave, so that threads loop.
const MAX_BLOCKS: u32 = 3;

fn run(name: &str, cfg: LaunchConfig, args: &[Arg]) {
    // SAFETY: every launch below passes the arguments of `name`'s signature with buffers of
    // the lengths its launcher checks (rows * cols activations, cols-long weights, rows
    // slots or tokens), so the kernel's accesses stay inside them.
    unsafe { launch(name, cfg, args) }.unwrap_or_else(|e| panic!("{e}"));
}

/// A weight on the "device", in its dtype.
enum DevWeight {
    F32(DevBuf<f32>),
    Bf16(DevBuf<bf16>),
    F16(DevBuf<f16>),
}

impl DevWeight {
    fn new(w: Weight) -> DevWeight {
        match w {
            Weight::F32(w) => DevWeight::F32(DevBuf::from_slice(w)),
            Weight::Bf16(w) => DevWeight::Bf16(DevBuf::from_slice(w)),
            Weight::F16(w) => DevWeight::F16(DevBuf::from_slice(w)),
        }
    }

    fn arg(&self) -> Arg {
        match self {
            DevWeight::F32(w) => w.into(),
            DevWeight::Bf16(w) => w.into(),
            DevWeight::F16(w) => w.into(),
        }
    }
}

/// The emulator as an [`Elementwise`] runner.
struct Emu;

impl Elementwise for Emu {
    fn rms_norm(&self, x: &[f32], w: Weight, rows: usize, cols: usize, eps: f32) -> Vec<f32> {
        let (dx, dw) = (DevBuf::from_slice(x), DevWeight::new(w));
        let out = DevBuf::<f32>::zeros(rows * cols);
        let args = [(&dx).into(), dw.arg(), (&out).into(), (cols as i32).into(), eps.into()];
        run(&format!("rms_norm_{}", w.suffix()), rms_norm_config(rows, cols).unwrap(), &args);
        out.to_vec()
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
        let (dx, dy, dw) = (DevBuf::from_slice(x), DevBuf::from_slice(y), DevWeight::new(w));
        let out = DevBuf::<f32>::zeros(rows * cols);
        let args =
            [(&dx).into(), (&dy).into(), dw.arg(), (&out).into(), (cols as i32).into(), eps.into()];
        run(&format!("add_rms_norm_{}", w.suffix()), rms_norm_config(rows, cols).unwrap(), &args);
        (dx.to_vec(), out.to_vec())
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
        let (dx, dcos, dsin) =
            (DevBuf::from_slice(x), DevBuf::from_slice(cos), DevBuf::from_slice(sin));
        let (heads_arg, head_dim_arg) = ((heads as i32).into(), (head_dim as i32).into());
        let args = [(&dx).into(), (&dcos).into(), (&dsin).into(), heads_arg, head_dim_arg];
        run("rope", rope_config(rows, heads, head_dim).unwrap(), &args);
        dx.to_vec()
    }

    fn silu_mul(&self, gate_up: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let n = rows * cols;
        let (dgu, out) = (DevBuf::from_slice(gate_up), DevBuf::<f32>::zeros(n));
        let args = [(&dgu).into(), (&out).into(), (cols as i32).into(), (n as u64).into()];
        run("silu_mul", flat_config(n, MAX_BLOCKS), &args);
        out.to_vec()
    }

    fn embed(&self, table: Weight, hidden: usize, tokens: &[u32]) -> Vec<f32> {
        let vocab = table.len() / hidden;
        let (dtable, dtokens) = (DevWeight::new(table), DevBuf::from_slice(tokens));
        let out = DevBuf::<f32>::zeros(tokens.len() * hidden);
        let args = [
            dtable.arg(),
            (&dtokens).into(),
            (&out).into(),
            (hidden as i32).into(),
            (vocab as u32).into(),
        ];
        let cfg = embed_config(tokens.len(), hidden).unwrap();
        run(&format!("embed_{}", table.suffix()), cfg, &args);
        out.to_vec()
    }

    fn add_bias(&self, x: &[f32], rows: usize, cols: usize, bias: Weight) -> Vec<f32> {
        let (dx, db, n) = (DevBuf::from_slice(x), DevWeight::new(bias), rows * cols);
        let args = [(&dx).into(), db.arg(), (cols as i32).into(), (n as u64).into()];
        run(&format!("add_bias_{}", bias.suffix()), flat_config(n, MAX_BLOCKS), &args);
        dx.to_vec()
    }

    fn add_assign(&self, x: &[f32], y: &[f32]) -> Vec<f32> {
        let (dx, dy, n) = (DevBuf::from_slice(x), DevBuf::from_slice(y), x.len());
        let args = [(&dx).into(), (&dy).into(), (n as u64).into()];
        run("add_assign", flat_config(n, MAX_BLOCKS), &args);
        dx.to_vec()
    }

    fn split_cols(
        &self,
        x: &[f32],
        rows: usize,
        total: usize,
        col0: usize,
        width: usize,
    ) -> Vec<f32> {
        let (dx, out, n) =
            (DevBuf::from_slice(x), DevBuf::<f32>::zeros(rows * width), rows * width);
        let args = [
            (&dx).into(),
            (&out).into(),
            (total as i32).into(),
            (col0 as i32).into(),
            (width as i32).into(),
            (n as u64).into(),
        ];
        run("split_cols", flat_config(n, MAX_BLOCKS), &args);
        out.to_vec()
    }

    fn gather_rows(&self, x: &[f32], cols: usize, idx: &[u32]) -> Vec<f32> {
        let (dx, didx, n) = (DevBuf::from_slice(x), DevBuf::from_slice(idx), idx.len() * cols);
        let out = DevBuf::<f32>::zeros(n);
        let args = [
            (&dx).into(),
            (&didx).into(),
            (&out).into(),
            (cols as i32).into(),
            ((x.len() / cols) as u32).into(),
            (n as u64).into(),
        ];
        run("gather_rows", flat_config(n, MAX_BLOCKS), &args);
        out.to_vec()
    }

    fn cast(&self, x: &[f32], to: Half) -> Vec<u16> {
        // The bits of bf16 or f16: the kernel sees only a pointer.
        let (dx, out, n) = (DevBuf::from_slice(x), DevBuf::<u16>::zeros(x.len()), x.len());
        let args = [(&dx).into(), (&out).into(), (n as u64).into()];
        run(&format!("cast_f32_{}", to.suffix()), flat_config(n, MAX_BLOCKS), &args);
        out.to_vec()
    }

    fn write_kv(
        &self,
        num_slots: usize,
        (k, v): (&[f32], &[f32]),
        slots: &[u32],
        kv_heads: usize,
        head_dim: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let width = kv_heads * head_dim;
        let k_cache = DevBuf::<f32>::zeros(num_slots * width);
        let v_cache = DevBuf::<f32>::zeros(num_slots * width);
        let (dk, dv, dslots) =
            (DevBuf::from_slice(k), DevBuf::from_slice(v), DevBuf::from_slice(slots));
        let args = [
            (&k_cache).into(),
            (&v_cache).into(),
            (&dk).into(),
            (&dv).into(),
            (&dslots).into(),
            (width as i32).into(),
            (num_slots as u32).into(),
        ];
        run("write_kv", write_kv_config(slots.len(), width).unwrap(), &args);
        (k_cache.to_vec(), v_cache.to_vec())
    }
}

#[test]
fn rms_norm_matches_the_host_for_every_weight_dtype() {
    cases::rms_norm_matches_the_host_for_every_weight_dtype(&Emu);
}

#[test]
fn add_rms_norm_updates_the_residual_and_normalises_it() {
    cases::add_rms_norm_updates_the_residual_and_normalises_it(&Emu);
}

#[test]
fn rope_rotates_half_pairs_exactly_like_the_cpu() {
    cases::rope_rotates_half_pairs_exactly_like_the_cpu(&Emu);
}

#[test]
fn silu_mul_gates_the_up_half() {
    cases::silu_mul_gates_the_up_half(&Emu);
}

#[test]
fn embed_gathers_and_widens_rows_and_zeroes_bad_ids() {
    cases::embed_gathers_and_widens_rows_and_zeroes_bad_ids(&Emu);
}

#[test]
fn add_bias_adds_the_widened_bias_to_every_row() {
    cases::add_bias_adds_the_widened_bias_to_every_row(&Emu);
}

#[test]
fn add_assign_covers_more_than_one_grid_wave() {
    cases::add_assign_covers_more_than_one_grid_wave(&Emu);
}

#[test]
fn split_cols_takes_each_output_of_a_fused_projection() {
    cases::split_cols_takes_each_output_of_a_fused_projection(&Emu);
}

#[test]
fn gather_rows_picks_rows_and_zeroes_bad_indices() {
    cases::gather_rows_picks_rows_and_zeroes_bad_indices(&Emu);
}

#[test]
fn casts_round_to_nearest_even_like_half() {
    cases::casts_round_to_nearest_even_like_half(&Emu);
}

#[test]
fn write_kv_stores_rows_at_slots_and_skips_padding() {
    cases::write_kv_stores_rows_at_slots_and_skips_padding(&Emu);
}
