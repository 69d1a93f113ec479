//! Launcher for `sampling.cu`: one CTA per logits row chooses its token on the device
//! with the CPU sampler's processors and semantics (see the source's header comment),
//! the host sampler's splitmix64 stream per sequence keyed by its seed and counted by position
//! (the contract of `rill_backend::sampling`).
//!
//! The per-row parameters come from the host each step ([`SampleParams`], 80 bytes a
//! row, uploaded by the launcher after checking every offset they carry against the
//! buffers they point into), together with each row's penalty list (token, count in
//! prompt + output, count in output) and grammar mask words.

use std::sync::Arc;

use cudarc::driver::{
    CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};

use crate::launch::{bind, check_len, product, to_i32};
use crate::{KernelError, Kernels};

/// Threads per row (`SAMPLE_THREADS` in `sampling.cu`).
const SAMPLE_THREADS: u32 = 512;

/// One row's sampling parameters, laid out as `struct SampleParams` in `sampling.cu`.
/// Neutral values mean "off", as in `rill_proto::SamplingParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_p: f32,
    pub typical_p: f32,
    pub rep_penalty: f32,
    /// TGI's frequency penalty (count / length × penalty).
    pub freq_penalty: f32,
    /// OpenAI's presence penalty (output tokens).
    pub presence: f32,
    /// OpenAI's frequency penalty (count × penalty, output tokens).
    pub count_penalty: f32,
    pub top_k: u32,
    pub seed: u64,
    /// Position of the token being chosen: the RNG counter.
    pub position: u64,
    /// [`Self::DO_SAMPLE`] | [`Self::WATERMARK`].
    pub flags: u32,
    /// `rill_backend::sampler::watermark::key(previous token)`.
    pub watermark_key: u32,
    /// This row's entries in the penalty lists.
    pub counts_off: u32,
    pub counts_len: u32,
    /// Tokens so far (TGI's frequency penalty divides by it).
    pub seq_len: u32,
    /// First word of this row's grammar mask, or [`Self::NO_MASK`].
    pub mask_off: u32,
    /// Alternatives to report (at most the launch's `max_top_n`).
    pub top_n: u32,
    /// The row of `logits` this row reads.
    pub row: u32,
}

const _: () = assert!(std::mem::size_of::<SampleParams>() == 80);

// SAFETY: `SampleParams` is `repr(C)`, `Copy`, made only of integers and floats (no
// padding bytes the compiler could leave uninitialised: 8 × 4 + 2 × 8 + 8 × 4 bytes,
// every 8-byte field 8-aligned), and matches the CUDA struct field for field.
unsafe impl DeviceRepr for SampleParams {}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams {
            temperature: 1.0,
            top_p: 1.0,
            typical_p: 1.0,
            rep_penalty: 1.0,
            freq_penalty: 0.0,
            presence: 0.0,
            count_penalty: 0.0,
            top_k: 0,
            seed: 0,
            position: 0,
            flags: 0,
            watermark_key: 0,
            counts_off: 0,
            counts_len: 0,
            seq_len: 0,
            mask_off: Self::NO_MASK,
            top_n: 0,
            row: 0,
        }
    }
}

impl SampleParams {
    pub const DO_SAMPLE: u32 = 1;
    pub const WATERMARK: u32 = 2;
    pub const NO_MASK: u32 = u32::MAX;
}

/// The penalty lists every row's `counts_off..counts_off + counts_len` points into:
/// each seen token once, its count in prompt + output, its count in the output.
#[derive(Debug)]
pub struct PenaltyLists<'a, P: DevicePtr<u32>> {
    pub tokens: &'a P,
    pub all: &'a P,
    pub output: &'a P,
}

/// Where the kernel writes its answers, `rows` (and `rows × max_top_n`) long.
#[derive(Debug)]
pub struct SampleOut<'a, U: DevicePtrMut<u32>, F: DevicePtrMut<f32>> {
    /// The chosen token (`u32::MAX` when no token was allowed).
    pub token: &'a mut U,
    pub logprob: &'a mut F,
    /// Alternatives, most likely first (`u32::MAX` past what the row asked for).
    pub top: &'a mut U,
    pub top_logprob: &'a mut F,
}

/// The launch of `sample_rows`: one `SAMPLE_THREADS`-thread block per row.
pub fn sample_config(rows: usize) -> Result<LaunchConfig, KernelError> {
    Ok(LaunchConfig {
        grid_dim: (to_i32("sample_rows", "rows", rows)? as u32, 1, 1),
        block_dim: (SAMPLE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Kernels {
    /// Choose one token per entry of `params` from row `params[r].row` of `logits`
    /// (`[logits_rows, vocab]`, left untouched; `work` is a `[params.len(), vocab]`
    /// scratch buffer). `params` (on the host) is checked against the logits, the
    /// penalty lists and the `masks` words, then uploaded.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_rows<P: DevicePtr<u32>, U: DevicePtrMut<u32>, F: DevicePtrMut<f32>>(
        &self,
        s: &Arc<CudaStream>,
        logits: &impl DevicePtr<f32>,
        work: &mut impl DevicePtrMut<f32>,
        vocab: usize,
        params: &[SampleParams],
        penalties: &PenaltyLists<'_, P>,
        masks: &impl DevicePtr<u32>,
        max_top_n: usize,
        out: SampleOut<'_, U, F>,
    ) -> Result<(), KernelError> {
        const OP: &str = "sample_rows";
        let rows = params.len();
        let cells = product(OP, rows, vocab)?;
        check_len(OP, "work", work.len(), cells)?;
        let logits_rows = logits.len().checked_div(vocab).unwrap_or(0);
        let lists = penalties.tokens.len();
        check_len(OP, "penalty counts (all)", penalties.all.len(), lists)?;
        check_len(OP, "penalty counts (output)", penalties.output.len(), lists)?;
        let words = vocab.div_ceil(32);
        for (r, p) in params.iter().enumerate() {
            if p.row as usize >= logits_rows {
                let detail = format!("row {r} reads logits row {} of {logits_rows}", p.row);
                return Err(KernelError::Shape { op: OP, detail });
            }
            let end = p.counts_off as usize + p.counts_len as usize;
            if end > lists {
                let detail = format!("row {r}: penalty entries ..{end} past the {lists} listed");
                return Err(KernelError::Shape { op: OP, detail });
            }
            if p.mask_off != SampleParams::NO_MASK && p.mask_off as usize + words > masks.len() {
                let detail =
                    format!("row {r}: mask words from {} past {}", p.mask_off, masks.len());
                return Err(KernelError::Shape { op: OP, detail });
            }
            if p.top_n as usize > max_top_n || p.temperature.is_nan() || p.temperature <= 0.0 {
                let detail =
                    format!("row {r}: top_n {} > {max_top_n} or temperature <= 0", p.top_n);
                return Err(KernelError::Shape { op: OP, detail });
            }
        }
        check_len(OP, "token out", out.token.len(), rows)?;
        check_len(OP, "logprob out", out.logprob.len(), rows)?;
        check_len(OP, "top out", out.top.len(), product(OP, rows, max_top_n)?)?;
        check_len(OP, "top logprob out", out.top_logprob.len(), product(OP, rows, max_top_n)?)?;
        if rows == 0 {
            return Ok(());
        }
        let cfg = sample_config(rows)?;
        let vocab = to_i32(OP, "vocab", vocab)?;
        let max_top_n = to_i32(OP, "max_top_n", max_top_n)?;
        bind(s)?;
        let params = s.clone_htod(params)?;
        let f = self.function("sample_rows")?;
        let (logits, _logits) = logits.device_ptr(s);
        let (work, _work) = work.device_ptr_mut(s);
        let (params_ptr, _params) = params.device_ptr(s);
        let (tokens, _tokens) = penalties.tokens.device_ptr(s);
        let (all, _all) = penalties.all.device_ptr(s);
        let (output, _output) = penalties.output.device_ptr(s);
        let (masks, _masks) = masks.device_ptr(s);
        let (token, _token) = out.token.device_ptr_mut(s);
        let (logprob, _logprob) = out.logprob.device_ptr_mut(s);
        let (top, _top) = out.top.device_ptr_mut(s);
        let (top_logprob, _top_logprob) = out.top_logprob.device_ptr_mut(s);
        let mut launch = s.launch_builder(f);
        launch
            .arg(&logits)
            .arg(&work)
            .arg(&vocab)
            .arg(&params_ptr)
            .arg(&tokens)
            .arg(&all)
            .arg(&output)
            .arg(&masks)
            .arg(&token)
            .arg(&logprob)
            .arg(&top)
            .arg(&top_logprob)
            .arg(&max_top_n);
        // SAFETY: the arguments match `sample_rows` in sampling.cu in order and type.
        // Block r reads logits row params[r].row (checked < logits.len() / vocab) and
        // writes row r of work (checked to hold rows × vocab), reads params[r] (uploaded: rows entries), the penalty entries
        // counts_off..counts_off + counts_len and the mask words mask_off..mask_off +
        // vocab/32 (both checked above against the lists' lengths), and writes out
        // entry r and top entries r × max_top_n.. (checked). Penalty token ids are
        // data: the kernel indexes the row with them, so the caller lists ids < vocab
        // (the sampler's own counts, of tokens the model produced or was given). The
        // outputs and work are borrowed exclusively, so nothing aliases an input.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
