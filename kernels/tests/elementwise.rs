//! The elementwise kernels on a real GPU against small host references.
//!
//! Each test runs one launcher on random inputs and compares with the CPU device's formula
//! computed here on the host: exactly where the kernel does the same rounded operations
//! (copies, widening, single adds, the rope products, casts), within 1e-5 relative where
//! the order of a reduction or `expf` may differ (RMSNorm, SiLU). Weights of every dtype
//! are compared against their exactly widened values, so the tolerance does not depend on
//! the weight dtype. Without a CUDA device every test prints `SKIP: no CUDA device` and
//! passes; with one but no NVRTC toolkit they skip too, unless `RILL_REQUIRE_NVRTC=1`.

mod common;

use common::reference::{HostWeights, assert_close, random, rms_norm_ref, rope_ref, silu_mul_ref};
use common::{Gpu, down, gpu, up, zeros};
use half::{bf16, f16};
use rill_kernels::cudarc::driver::CudaSlice;
use rill_kernels::kv::NO_SLOT;
use rill_kernels::{KernelError, WeightRef};

/// A weight vector in each dtype, with the f32 values the kernel must see.
struct Weights {
    f32: CudaSlice<f32>,
    bf16: CudaSlice<bf16>,
    f16: CudaSlice<f16>,
    widened: [Vec<f32>; 3],
}

impl Weights {
    fn new(gpu: &Gpu, values: &[f32]) -> Weights {
        let host = HostWeights::new(values);
        Weights {
            f32: up(gpu, values),
            bf16: up(gpu, &host.bf16),
            f16: up(gpu, &host.f16),
            widened: host.widened,
        }
    }

    fn each(&self) -> [(WeightRef<'_>, &[f32]); 3] {
        [
            (WeightRef::F32(&self.f32), &self.widened[0]),
            (WeightRef::Bf16(&self.bf16), &self.widened[1]),
            (WeightRef::F16(&self.f16), &self.widened[2]),
        ]
    }
}

#[test]
fn rms_norm_matches_the_host_for_every_weight_dtype() {
    let Some(gpu) = gpu() else { return };
    let s = &gpu.stream;
    // 1000 columns: one element per thread; 5000: several per thread of a 1024 block.
    for (rows, cols) in [(3, 1000), (2, 5000), (1, 7)] {
        let x = random(rows * cols, 1);
        let weights = Weights::new(gpu, &random(cols, 2));
        let dx = up(gpu, &x);
        for (w, widened) in weights.each() {
            let mut out = zeros(gpu, rows * cols);
            gpu.kernels.rms_norm(s, &dx, w, rows, cols, 1e-5, &mut out).unwrap();
            let want = rms_norm_ref(&x, widened, cols, 1e-5);
            assert_close(
                &format!("rms_norm_{} {rows}x{cols}", w.suffix()),
                &down(gpu, &out),
                &want,
            );
        }
    }
}

#[test]
fn add_rms_norm_updates_the_residual_and_normalises_it() {
    let Some(gpu) = gpu() else { return };
    let s = &gpu.stream;
    let (rows, cols) = (4, 2048);
    let (x, y) = (random(rows * cols, 3), random(rows * cols, 4));
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let weights = Weights::new(gpu, &random(cols, 5));
    let dy = up(gpu, &y);
    for (w, widened) in weights.each() {
        let mut dx = up(gpu, &x);
        let mut out = zeros(gpu, rows * cols);
        gpu.kernels.add_rms_norm(s, &mut dx, &dy, w, rows, cols, 1e-6, &mut out).unwrap();
        assert_eq!(down(gpu, &dx), sum, "x += y, exactly");
        assert_close("add_rms_norm", &down(gpu, &out), &rms_norm_ref(&sum, widened, cols, 1e-6));
    }
}

#[test]
fn rope_rotates_half_pairs_exactly_like_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (rows, heads, head_dim) = (5, 3, 64);
    let half = head_dim / 2;
    let x = random(rows * heads * head_dim, 6);
    let angles = random(rows * half, 7);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let want = rope_ref(&x, heads, head_dim, &cos, &sin);
    let mut dx = up(gpu, &x);
    let (dcos, dsin) = (up(gpu, &cos), up(gpu, &sin));
    gpu.kernels.rope(&gpu.stream, &mut dx, rows, heads, head_dim, &dcos, &dsin).unwrap();
    assert_eq!(down(gpu, &dx), want);
}

#[test]
fn silu_mul_gates_the_up_half() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols) = (3, 1111);
    let gate_up = random(rows * 2 * cols, 8);
    let want = silu_mul_ref(&gate_up, cols);
    let mut out = zeros(gpu, rows * cols);
    gpu.kernels.silu_mul(&gpu.stream, &up(gpu, &gate_up), rows, cols, &mut out).unwrap();
    assert_close("silu_mul", &down(gpu, &out), &want);
}

#[test]
fn embed_gathers_and_widens_rows_and_zeroes_bad_ids() {
    let Some(gpu) = gpu() else { return };
    let (vocab, hidden) = (50, 300);
    let table = Weights::new(gpu, &random(vocab * hidden, 9));
    let tokens = [7u32, 0, 49, 7, 50, u32::MAX];
    let dtokens = up(gpu, &tokens);
    for (w, widened) in table.each() {
        let mut out = zeros(gpu, tokens.len() * hidden);
        gpu.kernels.embed(&gpu.stream, w, hidden, &dtokens, tokens.len(), &mut out).unwrap();
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| match (t as usize) < vocab {
                true => widened[t as usize * hidden..][..hidden].to_vec(),
                false => vec![0.0; hidden],
            })
            .collect();
        assert_eq!(down(gpu, &out), want, "embed_{}", w.suffix());
    }
}

#[test]
fn add_bias_adds_the_widened_bias_to_every_row() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols) = (6, 517);
    let x = random(rows * cols, 10);
    let bias = Weights::new(gpu, &random(cols, 11));
    for (b, widened) in bias.each() {
        let mut dx = up(gpu, &x);
        gpu.kernels.add_bias(&gpu.stream, &mut dx, rows, cols, b).unwrap();
        let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + widened[i % cols]).collect();
        assert_eq!(down(gpu, &dx), want, "add_bias_{}", b.suffix());
    }
}

#[test]
fn add_assign_covers_more_than_one_grid_wave() {
    let Some(gpu) = gpu() else { return };
    // Far more elements than one wave of threads, so the grid-stride loop is exercised.
    let n = 3_000_017;
    let (x, y) = (random(n, 12), random(n, 13));
    let mut dx = up(gpu, &x);
    gpu.kernels.add_assign(&gpu.stream, &mut dx, &up(gpu, &y), n).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(down(gpu, &dx), want);
}

#[test]
fn split_cols_takes_each_output_of_a_fused_projection() {
    let Some(gpu) = gpu() else { return };
    let (rows, widths) = (7, [256, 64, 64]);
    let total: usize = widths.iter().sum();
    let x = random(rows * total, 14);
    let dx = up(gpu, &x);
    let mut col0 = 0;
    for width in widths {
        let mut out = zeros(gpu, rows * width);
        gpu.kernels.split_cols(&gpu.stream, &dx, rows, total, col0, width, &mut out).unwrap();
        let want: Vec<f32> =
            x.chunks(total).flat_map(|row| row[col0..col0 + width].to_vec()).collect();
        assert_eq!(down(gpu, &out), want, "columns {col0}..+{width}");
        col0 += width;
    }
    let mut out = zeros(gpu, rows * 2);
    let err = gpu.kernels.split_cols(&gpu.stream, &dx, rows, total, total - 1, 2, &mut out);
    assert!(matches!(err, Err(KernelError::Shape { .. })), "{err:?}");
}

#[test]
fn gather_rows_picks_rows_and_zeroes_bad_indices() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols) = (9, 130);
    let x = random(rows * cols, 15);
    let idx = [8u32, 0, 3, 3, 9];
    let mut out = zeros(gpu, idx.len() * cols);
    gpu.kernels
        .gather_rows(&gpu.stream, &up(gpu, &x), cols, &up(gpu, &idx), idx.len(), &mut out)
        .unwrap();
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&r| match (r as usize) < rows {
            true => x[r as usize * cols..][..cols].to_vec(),
            false => vec![0.0; cols],
        })
        .collect();
    assert_eq!(down(gpu, &out), want);
}

#[test]
fn casts_round_to_nearest_even_like_half() {
    let Some(gpu) = gpu() else { return };
    let mut x = random(10_000, 16);
    // Ties, overflow, subnormals and signed zero, beside the random values.
    x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 1e30, -1e30, 65520.0, 1e-40, 3e-8, -0.0]);
    x.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE]);
    let dx = up(gpu, &x);
    let mut b = gpu.stream.alloc_zeros::<bf16>(x.len()).unwrap();
    gpu.kernels.cast_f32_to_bf16(&gpu.stream, &dx, x.len(), &mut b).unwrap();
    let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    assert_eq!(down(gpu, &b).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    let mut h = gpu.stream.alloc_zeros::<f16>(x.len()).unwrap();
    gpu.kernels.cast_f32_to_f16(&gpu.stream, &dx, x.len(), &mut h).unwrap();
    let want: Vec<u16> = x.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    assert_eq!(down(gpu, &h).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
}

#[test]
fn write_kv_stores_rows_at_slots_and_skips_padding() {
    let Some(gpu) = gpu() else { return };
    let (num_blocks, kv_heads, head_dim) = (3, 2, 64);
    let width = kv_heads * head_dim;
    let slots_total = num_blocks * 16;
    // Slot 48 is past the cache: skipped like the padding slot.
    let slots = [17u32, 0, NO_SLOT, 47, 48, 5];
    let rows = slots.len();
    let (k, v) = (random(rows * width, 17), random(rows * width, 18));
    let mut k_cache = zeros(gpu, slots_total * width);
    let mut v_cache = zeros(gpu, slots_total * width);
    gpu.kernels
        .write_kv(
            &gpu.stream,
            &mut k_cache,
            &mut v_cache,
            &up(gpu, &k),
            &up(gpu, &v),
            &up(gpu, &slots),
            rows,
            kv_heads,
            head_dim,
        )
        .unwrap();
    let (mut want_k, mut want_v) = (vec![0.0; slots_total * width], vec![0.0; slots_total * width]);
    for (r, &slot) in slots.iter().enumerate() {
        if (slot as usize) < slots_total {
            let at = slot as usize * width;
            want_k[at..at + width].copy_from_slice(&k[r * width..][..width]);
            want_v[at..at + width].copy_from_slice(&v[r * width..][..width]);
        }
    }
    assert_eq!(down(gpu, &k_cache), want_k);
    assert_eq!(down(gpu, &v_cache), want_v);
}

#[test]
fn launchers_accept_views_and_reject_short_buffers() {
    let Some(gpu) = gpu() else { return };
    let s = &gpu.stream;
    let (rows, cols) = (2, 96);
    // A fixed buffer holding more rows than the step uses, read and written through views.
    let x = random(8 * cols, 19);
    let dx = up(gpu, &x);
    let weights = Weights::new(gpu, &random(cols, 20));
    let mut out = zeros(gpu, 8 * cols);
    let view = dx.slice(cols..3 * cols);
    let mut out_view = out.slice_mut(..rows * cols);
    gpu.kernels
        .rms_norm(s, &view, WeightRef::F32(&weights.f32), rows, cols, 1e-5, &mut out_view)
        .unwrap();
    let got = down(gpu, &out);
    let want = rms_norm_ref(&x[cols..3 * cols], &weights.widened[0], cols, 1e-5);
    assert_close("rms_norm through views", &got[..rows * cols], &want);
    assert!(got[rows * cols..].iter().all(|&v| v == 0.0), "nothing past the view is written");

    let mut short = zeros(gpu, rows * cols - 1);
    let err =
        gpu.kernels.rms_norm(s, &dx, WeightRef::F32(&weights.f32), rows, cols, 1e-5, &mut short);
    assert!(matches!(err, Err(KernelError::Shape { op: "rms_norm", .. })), "{err:?}");
    let err = gpu.kernels.rms_norm(
        s,
        &dx,
        WeightRef::Bf16(&weights.bf16),
        rows,
        cols + 1,
        1e-5,
        &mut out,
    );
    assert!(matches!(err, Err(KernelError::Shape { .. })), "weight length: {err:?}");
}
