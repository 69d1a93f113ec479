//! The per-row and grid-stride kernels, emulated: `norm.cu`, `rope.cu`, `activation.cu`,
//! `embedding.cu`, `elementwise.cu` and `kv_cache.cu`, launched with the launchers' own
//! configurations (`rms_norm_config`, `flat_config`, ...), against the host references the
//! GPU test uses: exact where the kernel does the same rounded operations (copies, widening,
//! single adds, rope's products, casts), 1e-5 relative where a reduction's order or `expf`
//! may differ. Grid-stride kernels run with a small grid cap, so every thread loops.

#[path = "../../tests/common/reference.rs"]
mod reference;

use half::{bf16, f16};
use reference::{HostWeights, assert_close, random, rms_norm_ref, rope_ref, silu_mul_ref};
use rill_kernels::elementwise::embed_config;
use rill_kernels::flat_config;
use rill_kernels::kv::{NO_SLOT, write_kv_config};
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

/// A weight in each dtype on the "device", with the f32 values the kernel must see.
struct Weights {
    f32: DevBuf<f32>,
    bf16: DevBuf<bf16>,
    f16: DevBuf<f16>,
    host: HostWeights,
}

impl Weights {
    fn new(values: &[f32]) -> Weights {
        let host = HostWeights::new(values);
        Weights {
            f32: DevBuf::from_slice(values),
            bf16: DevBuf::from_slice(&host.bf16),
            f16: DevBuf::from_slice(&host.f16),
            host,
        }
    }

    /// (entry-point suffix, the weight as an argument, its widened values) per dtype.
    fn each(&self) -> [(&str, Arg, &[f32]); 3] {
        [
            ("f32", (&self.f32).into(), &self.host.widened[0]),
            ("bf16", (&self.bf16).into(), &self.host.widened[1]),
            ("f16", (&self.f16).into(), &self.host.widened[2]),
        ]
    }
}

#[test]
fn rms_norm_matches_the_host_for_every_weight_dtype() {
    // One element per thread; several per thread of a 1024-thread block; a row of 7.
    for (rows, cols) in [(3, 1000), (2, 5000), (1, 7)] {
        let x = random(rows * cols, 1);
        let (dx, weights) = (DevBuf::from_slice(&x), Weights::new(&random(cols, 2)));
        for (suffix, w, widened) in weights.each() {
            let out = DevBuf::<f32>::zeros(rows * cols);
            let cfg = rms_norm_config(rows, cols).unwrap();
            let args = [(&dx).into(), w, (&out).into(), (cols as i32).into(), 1e-5f32.into()];
            run(&format!("rms_norm_{suffix}"), cfg, &args);
            let what = format!("rms_norm_{suffix} {rows}x{cols}");
            assert_close(&what, &out.to_vec(), &rms_norm_ref(&x, widened, cols, 1e-5));
        }
    }
}

#[test]
fn add_rms_norm_updates_the_residual_and_normalises_it() {
    let (rows, cols) = (4, 2048);
    let (x, y) = (random(rows * cols, 3), random(rows * cols, 4));
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let (dy, weights) = (DevBuf::from_slice(&y), Weights::new(&random(cols, 5)));
    for (suffix, w, widened) in weights.each() {
        let (dx, out) = (DevBuf::from_slice(&x), DevBuf::<f32>::zeros(rows * cols));
        let args =
            [(&dx).into(), (&dy).into(), w, (&out).into(), (cols as i32).into(), 1e-6f32.into()];
        run(&format!("add_rms_norm_{suffix}"), rms_norm_config(rows, cols).unwrap(), &args);
        assert_eq!(dx.to_vec(), sum, "x += y, exactly");
        assert_close("add_rms_norm", &out.to_vec(), &rms_norm_ref(&sum, widened, cols, 1e-6));
    }
}

#[test]
fn rope_rotates_half_pairs_exactly_like_the_cpu() {
    let (rows, heads, head_dim) = (5, 3, 64);
    let x = random(rows * heads * head_dim, 6);
    let angles = random(rows * head_dim / 2, 7);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let (dx, dcos, dsin) =
        (DevBuf::from_slice(&x), DevBuf::from_slice(&cos), DevBuf::from_slice(&sin));
    let args = [
        (&dx).into(),
        (&dcos).into(),
        (&dsin).into(),
        (heads as i32).into(),
        (head_dim as i32).into(),
    ];
    run("rope", rope_config(rows, heads, head_dim).unwrap(), &args);
    assert_eq!(dx.to_vec(), rope_ref(&x, heads, head_dim, &cos, &sin));
}

#[test]
fn silu_mul_gates_the_up_half() {
    let (rows, cols) = (3, 1111);
    let gate_up = random(rows * 2 * cols, 8);
    let (dgu, out) = (DevBuf::from_slice(&gate_up), DevBuf::<f32>::zeros(rows * cols));
    let n = rows * cols;
    let args = [(&dgu).into(), (&out).into(), (cols as i32).into(), (n as u64).into()];
    run("silu_mul", flat_config(n, MAX_BLOCKS), &args);
    assert_close("silu_mul", &out.to_vec(), &silu_mul_ref(&gate_up, cols));
}

#[test]
fn embed_gathers_and_widens_rows_and_zeroes_bad_ids() {
    let (vocab, hidden) = (50, 300);
    let table = Weights::new(&random(vocab * hidden, 9));
    let tokens = [7u32, 0, 49, 7, 50, u32::MAX];
    let dtokens = DevBuf::from_slice(&tokens);
    for (suffix, w, widened) in table.each() {
        let out = DevBuf::<f32>::zeros(tokens.len() * hidden);
        let args =
            [w, (&dtokens).into(), (&out).into(), (hidden as i32).into(), (vocab as u32).into()];
        run(&format!("embed_{suffix}"), embed_config(tokens.len(), hidden).unwrap(), &args);
        let want: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| match (t as usize) < vocab {
                true => widened[t as usize * hidden..][..hidden].to_vec(),
                false => vec![0.0; hidden],
            })
            .collect();
        assert_eq!(out.to_vec(), want, "embed_{suffix}");
    }
}

#[test]
fn add_bias_and_add_assign_are_single_rounded_adds() {
    let (rows, cols) = (6, 517);
    let x = random(rows * cols, 10);
    let bias = Weights::new(&random(cols, 11));
    let n = rows * cols;
    for (suffix, b, widened) in bias.each() {
        let dx = DevBuf::from_slice(&x);
        run(
            &format!("add_bias_{suffix}"),
            flat_config(n, MAX_BLOCKS),
            &[(&dx).into(), b, (cols as i32).into(), (n as u64).into()],
        );
        let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + widened[i % cols]).collect();
        assert_eq!(dx.to_vec(), want, "add_bias_{suffix}");
    }
    let y = random(n, 12);
    let (dx, dy) = (DevBuf::from_slice(&x), DevBuf::from_slice(&y));
    run("add_assign", flat_config(n, MAX_BLOCKS), &[(&dx).into(), (&dy).into(), (n as u64).into()]);
    assert_eq!(dx.to_vec(), x.iter().zip(&y).map(|(a, b)| a + b).collect::<Vec<_>>());
}

#[test]
fn split_cols_and_gather_rows_move_rows_and_columns() {
    let (rows, widths) = (7, [256, 64, 64]);
    let total: usize = widths.iter().sum();
    let x = random(rows * total, 14);
    let dx = DevBuf::from_slice(&x);
    let mut col0 = 0;
    for width in widths {
        let (out, n) = (DevBuf::<f32>::zeros(rows * width), rows * width);
        let args = [
            (&dx).into(),
            (&out).into(),
            (total as i32).into(),
            (col0 as i32).into(),
            (width as i32).into(),
            (n as u64).into(),
        ];
        run("split_cols", flat_config(n, MAX_BLOCKS), &args);
        let want: Vec<f32> =
            x.chunks(total).flat_map(|row| row[col0..col0 + width].to_vec()).collect();
        assert_eq!(out.to_vec(), want, "columns {col0}..+{width}");
        col0 += width;
    }
    let idx = [6u32, 0, 3, 3, 7];
    let (didx, out) = (DevBuf::from_slice(&idx), DevBuf::<f32>::zeros(idx.len() * total));
    let n = idx.len() * total;
    let args = [
        (&dx).into(),
        (&didx).into(),
        (&out).into(),
        (total as i32).into(),
        (rows as u32).into(),
        (n as u64).into(),
    ];
    run("gather_rows", flat_config(n, MAX_BLOCKS), &args);
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&r| match (r as usize) < rows {
            true => x[r as usize * total..][..total].to_vec(),
            false => vec![0.0; total],
        })
        .collect();
    assert_eq!(out.to_vec(), want);
}

#[test]
fn casts_round_to_nearest_even_like_half() {
    let mut x = random(10_000, 16);
    // Ties, overflow, subnormals and signed zero, beside the random values.
    x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 1e30, -1e30, 65520.0, 1e-40, 3e-8, -0.0]);
    x.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 65519.0, 2.98e-8]);
    let (dx, n) = (DevBuf::from_slice(&x), x.len());
    let b = DevBuf::<bf16>::zeros(n);
    run(
        "cast_f32_bf16",
        flat_config(n, MAX_BLOCKS),
        &[(&dx).into(), (&b).into(), (n as u64).into()],
    );
    let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    assert_eq!(b.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    let h = DevBuf::<f16>::zeros(n);
    run(
        "cast_f32_f16",
        flat_config(n, MAX_BLOCKS),
        &[(&dx).into(), (&h).into(), (n as u64).into()],
    );
    let want: Vec<u16> = x.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    assert_eq!(h.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
}

#[test]
fn write_kv_stores_rows_at_slots_and_skips_padding() {
    let (num_blocks, kv_heads, head_dim) = (3, 2, 64);
    let width = kv_heads * head_dim;
    let slots_total = num_blocks * 16;
    // Slot 48 is past the cache: skipped like the padding slot.
    let slots = [17u32, 0, NO_SLOT, 47, 48, 5];
    let rows = slots.len();
    let (k, v) = (random(rows * width, 17), random(rows * width, 18));
    let k_cache = DevBuf::<f32>::zeros(slots_total * width);
    let v_cache = DevBuf::<f32>::zeros(slots_total * width);
    let (dk, dv, dslots) =
        (DevBuf::from_slice(&k), DevBuf::from_slice(&v), DevBuf::from_slice(&slots));
    let args = [
        (&k_cache).into(),
        (&v_cache).into(),
        (&dk).into(),
        (&dv).into(),
        (&dslots).into(),
        (width as i32).into(),
        (slots_total as u32).into(),
    ];
    run("write_kv", write_kv_config(rows, width).unwrap(), &args);
    let (mut want_k, mut want_v) = (vec![0.0; slots_total * width], vec![0.0; slots_total * width]);
    for (r, &slot) in slots.iter().enumerate() {
        if (slot as usize) < slots_total {
            let at = slot as usize * width;
            want_k[at..at + width].copy_from_slice(&k[r * width..][..width]);
            want_v[at..at + width].copy_from_slice(&v[r * width..][..width]);
        }
    }
    assert_eq!(k_cache.to_vec(), want_k);
    assert_eq!(v_cache.to_vec(), want_v);
}
