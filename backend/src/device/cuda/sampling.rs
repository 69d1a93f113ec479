//! Token choice on the GPU: the sampler's flattened state ([`DeviceSampling`]) becomes
//! one `SampleParams` per row for `sampling.cu`, whose answers come back as
//! [`RowChoice`]s. The logits never leave the device; what crosses is the
//! parameters, the seen-token lists and grammar masks going up, and a token, a
//! logprob and the top-n coming down per row.

use rill_kernels::sampling::{PenaltyLists, SampleOut, SampleParams};
use rill_proto::TokenId;

use super::memory::upload;
use super::{Cuda, CudaMat, OpError};
use crate::sampling::{DeviceSampling, RowChoice};

impl Cuda {
    pub(super) fn sample_rows(
        &self,
        logits: &CudaMat,
        s: &DeviceSampling,
    ) -> Result<Vec<RowChoice>, OpError> {
        let rows = s.rows.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let data = logits.data.as_ref().ok_or(OpError::Missing)?;
        let params = kernel_params(s);
        // One padding entry each, so no buffer is empty.
        let column = |f: fn(&(u32, u32, u32)) -> u32| -> Vec<u32> {
            s.seen.iter().map(f).chain([0]).collect()
        };
        let stream = &self.stream;
        let tokens = upload(stream, &column(|e| e.0))?;
        let all = upload(stream, &column(|e| e.1))?;
        let output = upload(stream, &column(|e| e.2))?;
        let masks = upload(stream, &s.masks.iter().copied().chain([0]).collect::<Vec<_>>())?;
        let max_top_n = s.max_top_n.max(1);
        let mut work = stream.alloc_zeros::<f32>(rows * s.vocab)?;
        let mut token = stream.alloc_zeros::<u32>(rows)?;
        let mut logprob = stream.alloc_zeros::<f32>(rows)?;
        let mut top = stream.alloc_zeros::<u32>(rows * max_top_n)?;
        let mut top_logprob = stream.alloc_zeros::<f32>(rows * max_top_n)?;
        self.kernels.sample_rows(
            stream,
            data,
            &mut work,
            s.vocab,
            &params,
            &PenaltyLists { tokens: &tokens, all: &all, output: &output },
            &masks,
            max_top_n,
            SampleOut {
                token: &mut token,
                logprob: &mut logprob,
                top: &mut top,
                top_logprob: &mut top_logprob,
            },
        )?;
        let token = stream.clone_dtoh(&token)?;
        let logprob = stream.clone_dtoh(&logprob)?;
        let top = stream.clone_dtoh(&top)?;
        let top_logprob = stream.clone_dtoh(&top_logprob)?;
        stream.synchronize()?;
        Ok(row_choices(s, &token, &logprob, &top, &top_logprob, max_top_n))
    }
}

/// `sampling.cu`'s answers read back as one [`RowChoice`] per row: a token (`u32::MAX`:
/// none allowed), its logprob, and each row's `top_n` of its `max_top_n` alternatives
/// (`u32::MAX`: fewer exist).
pub fn row_choices(
    s: &DeviceSampling,
    token: &[u32],
    logprob: &[f32],
    top: &[u32],
    top_logprob: &[f32],
    max_top_n: usize,
) -> Vec<RowChoice> {
    (0..s.rows.len())
        .map(|r| RowChoice {
            token: (token[r] != u32::MAX).then_some(TokenId(token[r])),
            logprob: logprob[r],
            top: (0..s.rows[r].top_n as usize)
                .map(|i| r * max_top_n + i)
                .filter(|&i| top[i] != u32::MAX)
                .map(|i| (TokenId(top[i]), top_logprob[i]))
                .collect(),
        })
        .collect()
}

/// `sampling.cu`'s parameters for each row of the flattened state (what the GPU launches
/// and what the emulated kernel tests launch).
pub fn kernel_params(s: &DeviceSampling) -> Vec<SampleParams> {
    s.rows
        .iter()
        .map(|r| SampleParams {
            temperature: r.params.temperature,
            top_p: r.params.top_p,
            typical_p: r.params.typical_p,
            rep_penalty: r.params.repetition_penalty,
            freq_penalty: r.params.frequency_penalty,
            presence: r.params.presence_penalty,
            count_penalty: r.params.count_penalty,
            top_k: r.params.top_k,
            seed: r.params.seed,
            position: r.position,
            flags: if r.params.samples() { SampleParams::DO_SAMPLE } else { 0 }
                | if r.watermark_key.is_some() { SampleParams::WATERMARK } else { 0 },
            watermark_key: r.watermark_key.unwrap_or(0),
            counts_off: r.seen.start,
            counts_len: r.seen.end - r.seen.start,
            seq_len: r.seq_len,
            mask_off: r.mask.unwrap_or(SampleParams::NO_MASK),
            top_n: r.top_n,
            row: r.logits_row,
        })
        .collect()
}
