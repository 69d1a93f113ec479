//! `sample_rows` (`sampling.cu`), emulated: the tests of `kernels/tests/common/sampling.rs`,
//! which the GPU tests run too, against the same host references, with fewer draws than on
//! a GPU where the distribution is tested (each row is a 512-thread CTA); and the kernel
//! against the host sampler on the same flattened state (`rill_backend::sampling`, the
//! contract both follow): the same token for seeded rows with every processor.

#[path = "../../tests/common/reference.rs"]
mod reference;
#[path = "../../tests/common/sampling.rs"]
mod sampling;

use rill_backend::device::cuda::{kernel_params, row_choices};
use rill_backend::sampler::sample_flat;
use rill_backend::sampling::{DeviceRow, DeviceSampling, RowChoice};
use rill_kernels::sampling::sample_config;
use rill_kernels_emu::{DevBuf, launch};
use rill_proto::SamplingParams;
use sampling::{self as cases, Launch, Out, Sampler};

/// The emulator as a [`Sampler`].
struct Emu;

/// Launch `sample_rows` on `logits` for a flattened step, as the CUDA device does
/// (`kernel_params`), and read the answers back as the device does (`row_choices`).
fn emulate(logits: &[f32], s: &DeviceSampling) -> Vec<RowChoice> {
    let l = Launch {
        logits,
        vocab: s.vocab,
        params: kernel_params(s),
        lists: &s.seen,
        masks: &s.masks,
        max_top_n: s.max_top_n.max(1),
    };
    let out = Emu.sample(&l);
    row_choices(s, &out.token, &out.logprob, &out.top, &out.top_logprob, l.max_top_n)
}

impl Sampler for Emu {
    // Logits of half the GPU's spread, so that 600 draws expect five of every token.
    const CHI_DRAWS: (usize, f32) = (600, 1.0);
    const BOUND_DRAWS: usize = 40;

    fn sample(&self, l: &Launch) -> Out {
        let Launch { logits, vocab, ref params, max_top_n, .. } = *l;
        let rows = params.len();
        let [tokens, all, output, d_masks] = l.u32_buffers().map(|b| DevBuf::from_slice(&b));
        let (d_logits, work) = (DevBuf::from_slice(logits), DevBuf::<f32>::zeros(rows * vocab));
        let d_params = DevBuf::from_slice(params);
        let (token, logprob) = (DevBuf::<u32>::zeros(rows), DevBuf::<f32>::zeros(rows));
        let top = DevBuf::<u32>::zeros((rows * max_top_n).max(1));
        let top_logprob = DevBuf::<f32>::zeros((rows * max_top_n).max(1));
        let args = [
            (&d_logits).into(),
            (&work).into(),
            (vocab as i32).into(),
            (&d_params).into(),
            (&tokens).into(),
            (&all).into(),
            (&output).into(),
            (&d_masks).into(),
            (&token).into(),
            (&logprob).into(),
            (&top).into(),
            (&top_logprob).into(),
            (max_top_n as i32).into(),
        ];
        // SAFETY: the arguments follow `sample_rows`; as `Kernels::sample_rows` checks, every
        // row reads a logits row that exists, penalty entries and mask words inside the
        // lists (each test's offsets and lengths are within them), and writes rows x vocab of
        // work, rows of token/logprob and rows x max_top_n of the top-n outputs.
        unsafe { launch("sample_rows", sample_config(rows).unwrap(), &args) }
            .unwrap_or_else(|e| panic!("{e}"));
        Out {
            token: token.to_vec(),
            logprob: logprob.to_vec(),
            top: top.to_vec(),
            top_logprob: top_logprob.to_vec(),
        }
    }
}

#[test]
fn greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n() {
    cases::greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n(&Emu);
}

#[test]
fn penalties_and_temperature_shape_the_reported_distribution() {
    cases::penalties_and_temperature_shape_the_reported_distribution(&Emu);
}

#[test]
fn draws_follow_the_distribution_and_depend_only_on_seed_and_position() {
    cases::draws_follow_the_distribution_and_depend_only_on_seed_and_position(&Emu);
}

#[test]
fn top_k_top_p_typical_and_masks_bound_the_draws() {
    cases::top_k_top_p_typical_and_masks_bound_the_draws(&Emu);
}

/// Seeded rows through every processor the device runs (penalties over seen lists, the
/// watermark, dense and sparse grammar masks, temperature, top-k, top-p, typical-p and
/// their combinations, and greedy rows among them), each at several positions: the
/// kernel picks the host sampler's token, with its logprob and top-n within f32 rounding.
#[test]
fn the_kernel_chooses_what_the_host_sampler_chooses() {
    let vocab = 1000usize;
    let words = vocab.div_ceil(32);
    let base = SamplingParams { do_sample: true, seed: 17, ..SamplingParams::default() };
    let configs: Vec<SamplingParams> = vec![
        SamplingParams::default(),
        SamplingParams { repetition_penalty: 1.3, ..SamplingParams::default() },
        base.clone(),
        SamplingParams { temperature: 0.6, ..base.clone() },
        SamplingParams { top_k: 7, temperature: 1.4, ..base.clone() },
        SamplingParams { top_p: 0.8, ..base.clone() },
        SamplingParams { typical_p: 0.6, ..base.clone() },
        SamplingParams {
            repetition_penalty: 1.4,
            frequency_penalty: 0.5,
            presence_penalty: 0.3,
            count_penalty: 0.2,
            temperature: 0.9,
            ..base.clone()
        },
        SamplingParams { watermark: true, top_k: 50, top_p: 0.95, ..base.clone() },
        SamplingParams { top_k: 20, top_p: 0.9, typical_p: 0.9, temperature: 0.7, ..base },
    ];
    let positions = 6;
    let mut state = 5u64;
    let mut s = DeviceSampling { vocab, max_top_n: 3, ..DeviceSampling::default() };
    let mut logits = Vec::new();
    for (c, params) in configs.iter().enumerate() {
        for pos in 0..positions {
            let r = s.rows.len();
            // Logits spread like a model's (a few likely tokens), scaled by 3.
            logits.extend(reference::random_from(vocab, &mut state).iter().map(|x| x * 3.0));
            let start = s.seen.len() as u32;
            if c == 1 || c == 7 {
                for k in 0..12u32 {
                    let t = (k * 83 + pos as u32 * 7) % vocab as u32;
                    s.seen.push((t, 1 + k % 3, k % 2));
                }
            }
            // Grammar masks on the even positions of the last three configurations: a dense
            // one (every third token allowed) and a sparse one (eight tokens).
            let mask = (c >= 7 && pos % 2 == 0).then(|| {
                let off = s.masks.len() as u32;
                let mut m = vec![0u32; words];
                for t in 0..vocab {
                    let allow = if pos % 4 == 0 { t % 3 == 0 } else { t % 125 == 4 };
                    if allow {
                        m[t / 32] |= 1 << (t % 32);
                    }
                }
                s.masks.extend(m);
                off
            });
            s.rows.push(DeviceRow {
                logits_row: r as u32,
                params: params.clone(),
                watermark_key: params.watermark.then_some(0x1234_5678 ^ pos as u32),
                position: 40 + pos as u64,
                seq_len: 40 + pos as u32,
                seen: start..s.seen.len() as u32,
                mask,
                top_n: (r % 4) as u32,
            });
        }
    }
    let host = sample_flat(&logits, &s);
    let kernel = emulate(&logits, &s);
    let mut drawn = std::collections::HashSet::new();
    for (r, (h, k)) in host.iter().zip(&kernel).enumerate() {
        let what = format!("row {r}: {:?}", s.rows[r].params);
        assert_eq!(h.token, k.token, "{what}");
        assert!((h.logprob - k.logprob).abs() < 1e-4, "{what}: {} vs {}", h.logprob, k.logprob);
        assert_eq!(h.top.len(), k.top.len(), "{what}");
        for (a, b) in h.top.iter().zip(&k.top) {
            assert_eq!(a.0, b.0, "{what}");
            assert!((a.1 - b.1).abs() < 1e-4, "{what}");
        }
        drawn.insert(h.token);
    }
    // The draws differ from row to row (the test is not all argmaxes).
    assert!(drawn.len() > 30, "{} distinct tokens", drawn.len());
}
