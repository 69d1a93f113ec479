//! `sample_rows` (`sampling.cu`), emulated: the tests of `kernels/tests/common/sampling.rs`,
//! which the GPU tests run too, against the same host references, with fewer draws than on
//! a GPU where the distribution is tested (each row is a 512-thread CTA).

#[path = "../../tests/common/reference.rs"]
mod reference;
#[path = "../../tests/common/sampling.rs"]
mod sampling;

use rill_kernels::sampling::sample_config;
use rill_kernels_emu::{DevBuf, launch};
use sampling::{self as cases, Launch, Out, Sampler};

/// The emulator as a [`Sampler`].
struct Emu;

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
