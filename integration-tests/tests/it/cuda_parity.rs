//! The CUDA device against the CPU device (the reference): every op on random inputs,
//! and whole-model logits on the oracle fixtures.
//!
//! Each check is one body generic over the device under test `D`, run twice: with `D` =
//! the CPU itself, where everything must agree to the bit (this keeps the harness honest
//! in CI, which has no GPU), and with `D` = [`Cuda`], within tolerances that follow from
//! the arithmetic: f32 ops differ from the CPU only in summation order and `exp`
//! rounding; bf16/f16 weights go through tensor-core GEMMs whose activation input is
//! rounded to 16 bits (the CPU keeps it f32). Without a usable GPU the CUDA runs print
//! `SKIP: <why>` and pass.
//!
//! Errors are measured relative to the scale of the reference tensor (its largest
//! magnitude), so one tolerance fits outputs of any size.

use rill_backend::device::{AttentionShape, Device, KvLayout, Precision, StepPlan};
use rill_backend::weights::{DummyWeights, HostTensor, Storage, TensorData, WeightSource};
use rill_backend::{Cpu, Cuda, DType, KvCacheSize, LoadFormat, ModelDir, Runner, RunnerOptions};
use rill_integration_tests::fixture_model;
use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

/// How close the device under test must come to the CPU, as a fraction of the
/// reference's largest magnitude.
#[derive(Clone, Copy, Debug)]
struct Tol {
    /// f32 arithmetic in another order (norms, GEMMs with f32 weights, RoPE, SiLU).
    f32: f32,
    /// GEMMs with 16-bit weights (and 16-bit activation inputs on the GPU).
    half: f32,
    /// Attention over the paged cache, in an f32 model and in a 16-bit one (whose
    /// prefill attention may round Q, K, V and P to bf16 on tensor cores).
    attention: f32,
    attention_half: f32,
    /// Whole-model logits, f32 and 16-bit weights.
    logits_f32: f32,
    logits_half: f32,
}

const EXACT: Tol = Tol {
    f32: 0.0,
    half: 0.0,
    attention: 0.0,
    attention_half: 0.0,
    logits_f32: 0.0,
    logits_half: 0.0,
};

const CUDA: Tol = Tol {
    f32: 1e-4,
    half: 1e-2,
    attention: 1e-4,
    attention_half: 2e-2,
    logits_f32: 1e-4,
    logits_half: 5e-2,
};

/// The CUDA device, or `None` after printing why there is none.
pub(crate) fn cuda() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

/// `max |got - want| / max |want|`; NaN anywhere makes it NaN (and the check fail).
fn scaled_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter().zip(want).fold(0.0f32, |m, (g, w)| {
        let d = (g - w).abs();
        if d.is_nan() || m.is_nan() { f32::NAN } else { m.max(d) }
    }) / scale
}

#[track_caller]
pub(crate) fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    if tol == 0.0 {
        assert!(got == want, "{what}: not bit-identical (scaled error {})", scaled_err(got, want));
    } else {
        let err = scaled_err(got, want);
        assert!(err <= tol, "{what}: scaled error {err} > {tol}");
    }
}

/// splitmix64: a few random inputs, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

fn f32_tensor(name: &str, shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: TensorData::F32(Storage::Owned(data)),
    }
}

/// The same random parameter on both devices (dummy weights are deterministic by name;
/// `norm.weight` names are near 1, `.bias` near 0, matrices ~ 1/sqrt(fan-in)).
fn weight<D: Device>(
    cpu: &Cpu,
    dev: &D,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> (<Cpu as Device>::Weight, D::Weight) {
    let src = DummyWeights { dtype, seed: 7, has_lm_head: true };
    let load = || src.load(name, shape).unwrap_or_else(|e| panic!("{e}"));
    (cpu.weight(load()).unwrap(), dev.weight(load()).unwrap())
}

/// An activation holding `data`, made through the op set alone: an f32 embedding table
/// of the rows, gathered in order.
fn upload<D: Device>(dev: &D, data: &[f32], rows: usize, cols: usize) -> D::Activation {
    let table = dev.weight(f32_tensor("rows", &[rows, cols], data.to_vec())).unwrap();
    let plan = StepPlan { tokens: (0..rows as u32).collect(), ..Default::default() };
    let mut out = dev.activation(rows, cols);
    dev.embed(&table, &dev.plan(&plan).unwrap(), &mut out).unwrap();
    out
}

/// The same random activation on both devices.
fn act<D: Device>(
    cpu: &Cpu,
    dev: &D,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
) -> (<Cpu as Device>::Activation, D::Activation) {
    let data = rng.vec(rows * cols);
    (upload(cpu, &data, rows, cols), upload(dev, &data, rows, cols))
}

const DTYPES: [DType; 3] = [DType::F32, DType::Bf16, DType::F16];

fn inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32)).collect()
}

/// A step over sequences `(start_pos, len)`, each with its own shuffled blocks.
fn batch(seqs: &[(usize, usize)], tables: &[Vec<u32>]) -> ForwardBatch {
    let seqs = seqs
        .iter()
        .zip(tables)
        .enumerate()
        .map(|(i, (&(start_pos, len), table))| {
            let blocks = &table[..(start_pos + len).div_ceil(BLOCK_SIZE)];
            SeqStep::new(
                SeqId(i as u64),
                vec![TokenId(0); len],
                start_pos,
                blocks.iter().copied().map(BlockId).collect(),
            )
        })
        .collect();
    ForwardBatch { seqs, ..Default::default() }
}

/// Every op but attention, on odd and fixture-like shapes, in every weight dtype.
fn elementwise_and_gemm_ops_match<D: Device>(dev: &D, tol: Tol) {
    let cpu = Cpu::with_threads(2);
    let mut rng = Rng(1);
    let host = |x: &D::Activation| dev.to_host(x).expect("the device ran the op");

    for dtype in DTYPES {
        let name = format!("{dtype:?}");
        // embed: widening 16-bit values is exact.
        let (vocab, hidden, rows) = (97, 72, 13);
        let (tc, td) = weight(&cpu, dev, "model.embed_tokens.weight", &[vocab, hidden], dtype);
        let tokens: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
        let plan = StepPlan { tokens, ..Default::default() };
        let (mut oc, mut od) = (cpu.activation(rows, hidden), dev.activation(rows, hidden));
        cpu.embed(&tc, &cpu.plan(&plan).unwrap(), &mut oc).unwrap();
        dev.embed(&td, &dev.plan(&plan).unwrap(), &mut od).unwrap();
        check(&format!("embed {name}"), &host(&od), &oc.data, 0.0);

        // rms_norm, with the weight in its checkpoint dtype.
        for (rows, cols) in [(1, 64), (7, 129), (40, 1024)] {
            let (wc, wd) = weight(&cpu, dev, "l.input_layernorm.weight", &[cols], dtype);
            let (xc, xd) = act(&cpu, dev, &mut rng, rows, cols);
            let (mut oc, mut od) = (cpu.activation(0, 0), dev.activation(0, 0));
            cpu.rms_norm(&xc, &wc, 1e-5, &mut oc).unwrap();
            dev.rms_norm(&xd, &wd, 1e-5, &mut od).unwrap();
            check(&format!("rms_norm {name} {rows}x{cols}"), &host(&od), &oc.data, tol.f32);

            // add_rms_norm: the fused residual update against add_assign then rms_norm on
            // the CPU (on the CPU device itself: the same bits).
            let (xs, ys) = (rng.vec(rows * cols), rng.vec(rows * cols));
            let (mut xr, yr) = (upload(&cpu, &xs, rows, cols), upload(&cpu, &ys, rows, cols));
            cpu.add_assign(&mut xr, &yr).unwrap();
            cpu.rms_norm(&xr, &wc, 1e-5, &mut oc).unwrap();
            let (mut xd, yd) = (upload(dev, &xs, rows, cols), upload(dev, &ys, rows, cols));
            dev.add_rms_norm(&mut xd, &yd, &wd, 1e-5, &mut od).unwrap();
            let what = format!("add_rms_norm {name} {rows}x{cols}");
            check(&format!("{what}: x"), &host(&xd), &xr.data, 0.0);
            check(&format!("{what}: out"), &host(&od), &oc.data, tol.f32);
        }

        // linear, with and without bias; out reused across shapes as the model does.
        let gemm_tol = if dtype == DType::F32 { tol.f32 } else { tol.half };
        let (mut oc, mut od) = (cpu.activation(0, 0), dev.activation(0, 0));
        for (rows, inp, out, bias) in
            [(1, 64, 96, false), (5, 64, 400, true), (17, 160, 64, false), (33, 129, 67, true)]
        {
            let (wc, wd) = weight(&cpu, dev, "l.proj.weight", &[out, inp], dtype);
            let (bc, bd) = weight(&cpu, dev, "l.proj.bias", &[out], dtype);
            let (xc, xd) = act(&cpu, dev, &mut rng, rows, inp);
            cpu.linear(&xc, &wc, bias.then_some(&bc), &mut oc).unwrap();
            dev.linear(&xd, &wd, bias.then_some(&bd), &mut od).unwrap();
            let what = format!("linear {name} {rows}x{inp} -> {out}, bias {bias}");
            check(&what, &host(&od), &oc.data, gemm_tol);
        }
    }

    // rope at random positions, several head sizes.
    for (heads, head_dim) in [(4, 16), (3, 32), (2, 64), (2, 128)] {
        let seqs = [(0, 5), (37, 1), (200, 3)];
        let tables: Vec<Vec<u32>> = (0..3).map(|s| (s * 16..s * 16 + 16).collect()).collect();
        let plan = StepPlan::new(&batch(&seqs, &tables), &inv_freq(head_dim));
        let (mut xc, mut xd) = act(&cpu, dev, &mut rng, plan.rows(), heads * head_dim);
        cpu.rope(&mut xc, head_dim, &cpu.plan(&plan).unwrap()).unwrap();
        dev.rope(&mut xd, head_dim, &dev.plan(&plan).unwrap()).unwrap();
        check(&format!("rope head_dim {head_dim}"), &host(&xd), &xc.data, tol.f32);
    }

    // silu_mul, split_cols, add_assign, gather_sample_rows, gather_hidden_rows.
    for (rows, inter) in [(1, 160), (9, 173)] {
        let (gc, gd) = act(&cpu, dev, &mut rng, rows, 2 * inter);
        let (mut oc, mut od) = (cpu.activation(0, 0), dev.activation(0, 0));
        cpu.silu_mul(&gc, &mut oc).unwrap();
        dev.silu_mul(&gd, &mut od).unwrap();
        check(&format!("silu_mul {rows}x{inter}"), &host(&od), &oc.data, tol.f32);
    }
    let widths = [64, 32, 32];
    let (xc, xd) = act(&cpu, dev, &mut rng, 11, 128);
    let (mut c0, mut c1, mut c2) =
        (cpu.activation(0, 0), cpu.activation(0, 0), cpu.activation(0, 0));
    let (mut d0, mut d1, mut d2) =
        (dev.activation(0, 0), dev.activation(0, 0), dev.activation(0, 0));
    cpu.split_cols(&xc, &widths, &mut [&mut c0, &mut c1, &mut c2]).unwrap();
    dev.split_cols(&xd, &widths, &mut [&mut d0, &mut d1, &mut d2]).unwrap();
    for (i, (c, d)) in [(c0, d0), (c1, d1), (c2, d2)].iter().enumerate() {
        check(&format!("split_cols part {i}"), &host(d), &c.data, 0.0);
    }
    let (mut ac, mut ad) = act(&cpu, dev, &mut rng, 11, 128);
    cpu.add_assign(&mut ac, &xc).unwrap();
    dev.add_assign(&mut ad, &xd).unwrap();
    check("add_assign", &host(&ad), &ac.data, 0.0);
    for sample_rows in [vec![3, 0, 10, 10], vec![]] {
        let plan = StepPlan { sample_rows: sample_rows.clone(), ..Default::default() };
        let (mut oc, mut od) = (cpu.activation(0, 0), dev.activation(0, 0));
        cpu.gather_sample_rows(&xc, &cpu.plan(&plan).unwrap(), &mut oc).unwrap();
        dev.gather_sample_rows(&xd, &dev.plan(&plan).unwrap(), &mut od).unwrap();
        check(&format!("gather_sample_rows {sample_rows:?}"), &host(&od), &oc.data, 0.0);
    }
    for hidden_rows in [vec![0, 1, 2, 7, 8], vec![]] {
        let plan = StepPlan { hidden_rows: hidden_rows.clone(), ..Default::default() };
        let (mut oc, mut od) = (cpu.activation(0, 0), dev.activation(0, 0));
        cpu.gather_hidden_rows(&xc, &cpu.plan(&plan).unwrap(), &mut oc).unwrap();
        dev.gather_hidden_rows(&xd, &dev.plan(&plan).unwrap(), &mut od).unwrap();
        check(&format!("gather_hidden_rows {hidden_rows:?}"), &host(&od), &oc.data, 0.0);
    }
}

/// Paged attention: K/V written by slot into shuffled blocks (write_kv), then queries of
/// a mixed step (prefill from 0, a chunk in the middle, decodes at block edges and deep
/// in a long context) and of a pure-decode step, with GQA and sliding windows, in a model
/// whose weights are `dtype` (computed as the model would be: exactly for f32, at
/// `Precision::Fast` for a 16-bit model, where a device may round to bf16).
fn attention_matches<D: Device>(dev: &D, tol: Tol, dtype: DType) {
    let cpu = Cpu::with_threads(2);
    let precision = if dtype == DType::F32 { Precision::Exact } else { Precision::Fast };
    let tol = if dtype == DType::F32 { tol.attention } else { tol.attention_half };
    let mut rng = Rng(2);
    // (start_pos, query rows) per sequence.
    let mixed: [(usize, usize); 8] =
        [(0, 37), (50, 1), (20, 9), (0, 1), (300, 1), (15, 1), (16, 1), (100, 29)];
    let decode: [(usize, usize); 6] = [(50, 1), (0, 1), (300, 1), (15, 1), (16, 1), (700, 1)];
    for (heads, kv_heads, head_dim) in [(4, 2, 16), (4, 1, 32), (8, 2, 64), (6, 2, 80), (8, 8, 128)]
    {
        for window in [None, Some(7), Some(64)] {
            for seqs in [&mixed[..], &decode[..]] {
                let shape = AttentionShape { heads, kv_heads, head_dim, window, precision };
                let what = format!("attention {shape:?}, seqs {seqs:?}");
                let needed: Vec<usize> =
                    seqs.iter().map(|(s, l)| (s + l).div_ceil(BLOCK_SIZE)).collect();
                let num_blocks = needed.iter().sum::<usize>() + 5;
                let mut blocks: Vec<u32> = (0..num_blocks as u32).collect();
                rng.shuffle(&mut blocks);
                let mut tables = Vec::new();
                let mut at = 0;
                for n in &needed {
                    tables.push(blocks[at..at + n].to_vec());
                    at += n;
                }
                let layout = KvLayout { num_layers: 2, num_blocks, kv_heads, head_dim };
                let (mut cc, mut cd) =
                    (cpu.kv_cache(layout).unwrap(), dev.kv_cache(layout).unwrap());

                // Every position each sequence can see, written once, to layer 1.
                let history: Vec<(usize, usize)> = seqs.iter().map(|&(s, l)| (0, s + l)).collect();
                let plan = StepPlan::new(&batch(&history, &tables), &inv_freq(head_dim));
                let kv = kv_heads * head_dim;
                let (kc, kd) = act(&cpu, dev, &mut rng, plan.rows(), kv);
                let (vc, vd) = act(&cpu, dev, &mut rng, plan.rows(), kv);
                cpu.write_kv(&mut cc, 1, &kc, &vc, &cpu.plan(&plan).unwrap()).unwrap();
                dev.write_kv(&mut cd, 1, &kd, &vd, &dev.plan(&plan).unwrap()).unwrap();

                let plan = StepPlan::new(&batch(seqs, &tables), &inv_freq(head_dim));
                let (qc, qd) = act(&cpu, dev, &mut rng, plan.rows(), heads * head_dim);
                let (mut oc, mut od) = (cpu.activation(0, 0), dev.activation(0, 0));
                cpu.attention(&qc, &cc, 1, shape, &cpu.plan(&plan).unwrap(), &mut oc).unwrap();
                dev.attention(&qd, &cd, 1, shape, &dev.plan(&plan).unwrap(), &mut od).unwrap();
                check(&what, &dev.to_host(&od).expect("the device ran attention"), &oc.data, tol);
            }
        }
    }
}

/// One fixture model on both devices, fed the same tokens (the CPU's choices, so the
/// contexts never diverge): the oracle's two prompts, one prefilled whole and one in two
/// chunks alongside the other's first decode, then both decoding. Every step's logits
/// must agree within `tol`, and the greedy choice must be the same unless the logits'
/// difference allows a flip (a near tie in the CPU's logits).
fn model_matches<D: Device>(name: &str, dtype: Option<DType>, dev: D, tol: f32) {
    let dir = fixture_model(name);
    let model = ModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    let opts = RunnerOptions {
        kv_cache: KvCacheSize::Bytes(8 << 20),
        load_format: LoadFormat::Safetensors(dtype),
        ..RunnerOptions::default()
    };
    let mut cpu = Runner::load(&dir, &model.config, Cpu::with_threads(2), &opts).unwrap();
    let mut other = Runner::load(&dir, &model.config, dev, &opts).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    // Prompt and generated tokens, and how many of them are in the KV cache, per sequence.
    let mut seqs: Vec<Vec<u32>> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|p| p["ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
        .collect();
    let mut cached = vec![0usize; seqs.len()];
    let split = seqs[1].len() / 2;
    // Beside them, an embedding of the first prompt, 8 rows a step: its hidden states.
    let embedding = seqs[0].clone();
    for step in 0..10 {
        let mut batch = ForwardBatch { return_logits: true, ..Default::default() };
        for (i, seq) in seqs.iter().enumerate() {
            // Everything not yet cached (the prompt, or the last choice), but only the
            // first half of the second prompt on the first step.
            let end = if (i, step) == (1, 0) { split } else { seq.len() };
            batch.seqs.push(SeqStep {
                sample: end == seq.len(),
                ..SeqStep::new(
                    SeqId(i as u64),
                    seq[cached[i]..end].iter().copied().map(TokenId).collect(),
                    cached[i],
                    (i as u32 * 16..i as u32 * 16 + 16).map(BlockId).collect(),
                )
            });
        }
        let at = 8 * step;
        if at < embedding.len() {
            let end = (at + 8).min(embedding.len());
            batch.seqs.push(SeqStep {
                sample: false,
                hidden: true,
                ..SeqStep::new(
                    SeqId(9),
                    embedding[at..end].iter().copied().map(TokenId).collect(),
                    at,
                    (32..48).map(BlockId).collect(),
                )
            });
        }
        let want = cpu.step(&batch).unwrap();
        let got = other.step(&batch).unwrap();
        assert_eq!(want.hidden.len(), usize::from(at < embedding.len()));
        assert_eq!(want.hidden.len(), got.hidden.len());
        for ((wi, w), (gi, g)) in want.hidden.iter().zip(&got.hidden) {
            assert_eq!(wi, gi);
            check(&format!("{name} {dtype:?} step {step}: hidden states"), g, w, tol);
        }
        assert_eq!(want.sampled.len(), got.sampled.len());
        for (w, g) in want.sampled.iter().zip(&got.sampled) {
            assert_eq!(w.id, g.id);
            let (wl, gl) = (w.logits.as_ref().unwrap(), g.logits.as_ref().unwrap());
            let what = format!("{name} {dtype:?} step {step} sequence {}", w.id.0);
            check(&format!("{what}: logits"), gl, wl, tol);
            // If every logit is within `diff` of the CPU's, the two argmaxes can only
            // differ where the CPU's own gap between them is at most 2 · diff.
            if g.token != w.token {
                let diff = gl.iter().zip(wl).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                let gap = wl[w.token.index()] - wl[g.token.index()];
                assert!(
                    gap <= 2.0 * diff,
                    "{what}: greedy token {} vs the CPU's {} (CPU logit gap {gap}, logits within {diff})",
                    g.token.0,
                    w.token.0
                );
            }
        }
        for (s, seq) in batch.seqs.iter().zip(&mut seqs) {
            cached[s.id.0 as usize] = s.start_pos + s.tokens.len();
            if let Some(chosen) = want.sampled.iter().find(|t| t.id == s.id) {
                seq.push(chosen.token.0);
            }
        }
    }
}

fn all_models<D: Device>(make: impl Fn() -> D, tol: Tol) {
    for name in ["llama", "llama3", "mistral", "qwen2"] {
        model_matches(name, None, make(), tol.logits_f32);
    }
    model_matches("llama-bfloat16", None, make(), tol.logits_half);
    model_matches("llama-float16", None, make(), tol.logits_half);
    // Biases and per-layer windows with 16-bit GEMMs.
    model_matches("qwen2", Some(DType::Bf16), make(), tol.logits_half);
}

#[test]
fn cpu_ops_match_cpu_exactly() {
    elementwise_and_gemm_ops_match(&Cpu::with_threads(3), EXACT);
}

#[test]
fn cpu_attention_matches_cpu_exactly() {
    attention_matches(&Cpu::with_threads(3), EXACT, DType::F32);
    attention_matches(&Cpu::with_threads(3), EXACT, DType::Bf16);
}

#[test]
fn cpu_models_match_cpu_exactly() {
    all_models(|| Cpu::with_threads(3), EXACT);
}

#[test]
fn cuda_ops_match_cpu() {
    let Some(dev) = cuda() else { return };
    elementwise_and_gemm_ops_match(&dev, CUDA);
}

#[test]
fn cuda_attention_matches_cpu() {
    let Some(dev) = cuda() else { return };
    attention_matches(&dev, CUDA, DType::F32);
    // A fresh device: loading a 16-bit weight switches it to 16-bit attention for good.
    let Some(dev) = cuda() else { return };
    attention_matches(&dev, CUDA, DType::Bf16);
}

#[test]
fn cuda_models_match_cpu() {
    if cuda().is_none() {
        return;
    }
    all_models(|| Cuda::new(0).unwrap_or_else(|e| panic!("{e}")), CUDA);
}

/// The comparison itself: a CPU-against-CPU pass proves nothing if `check` cannot fail.
#[test]
fn check_catches_differences_and_nans() {
    let want = [1.0, -4.0, 0.5];
    check("same", &want, &want, 0.0);
    check("within", &[1.0, -4.0002, 0.5], &want, 1e-4);
    let fails = |got: [f32; 3], tol: f32| {
        std::panic::catch_unwind(|| check("t", &got, &want, tol)).is_err()
    };
    assert!(fails([1.0, -4.0, 0.5000001], 0.0));
    assert!(fails([1.0, -4.01, 0.5], 1e-3));
    assert!(fails([f32::NAN, -4.0, 0.5], 1.0));
    assert!(fails([1.0, -4.0, f32::NAN], 1.0));
}
