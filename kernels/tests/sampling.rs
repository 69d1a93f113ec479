//! `sample_rows` on a real GPU against host references of the CPU sampler's semantics: the
//! tests of `common/sampling.rs` (shared with the emulated tests of `kernels/emu`), with the
//! launcher on a CUDA stream and thousands of draws where the distribution is tested.
//! Without a CUDA device every test prints `SKIP` and passes.

mod common;

use common::sampling::{self as cases, Launch, Out, Sampler};
use common::{Gpu, down, on_gpu, up, zeros};
use rill_kernels::sampling::{PenaltyLists, SampleOut};

impl Sampler for Gpu {
    const CHI_DRAWS: (usize, f32) = (20_000, 2.0);
    const BOUND_DRAWS: usize = 2000;

    fn sample(&self, l: &Launch) -> Out {
        let Launch { logits, vocab, ref params, max_top_n, .. } = *l;
        let rows = params.len();
        let [tokens, all, output, d_masks] = l.u32_buffers().map(|b| up(self, &b));
        let (d_logits, mut work) = (up(self, logits), zeros(self, rows * vocab));
        let mut token = self.stream.alloc_zeros::<u32>(rows).unwrap();
        let mut logprob = zeros(self, rows);
        let mut top = self.stream.alloc_zeros::<u32>((rows * max_top_n).max(1)).unwrap();
        let mut top_logprob = zeros(self, (rows * max_top_n).max(1));
        let penalties = PenaltyLists { tokens: &tokens, all: &all, output: &output };
        let out = SampleOut {
            token: &mut token,
            logprob: &mut logprob,
            top: &mut top,
            top_logprob: &mut top_logprob,
        };
        self.kernels
            .sample_rows(
                &self.stream,
                &d_logits,
                &mut work,
                vocab,
                params,
                &penalties,
                &d_masks,
                max_top_n,
                out,
            )
            .expect("launch");
        Out {
            token: down(self, &token),
            logprob: down(self, &logprob),
            top: down(self, &top),
            top_logprob: down(self, &top_logprob),
        }
    }
}

#[test]
fn greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n() {
    on_gpu(cases::greedy_rows_take_the_first_maximum_with_its_logprob_and_top_n);
}

#[test]
fn penalties_and_temperature_shape_the_reported_distribution() {
    on_gpu(cases::penalties_and_temperature_shape_the_reported_distribution);
}

#[test]
fn draws_follow_the_distribution_and_depend_only_on_seed_and_position() {
    on_gpu(cases::draws_follow_the_distribution_and_depend_only_on_seed_and_position);
}

#[test]
fn top_k_top_p_typical_and_masks_bound_the_draws() {
    on_gpu(cases::top_k_top_p_typical_and_masks_bound_the_draws);
}
