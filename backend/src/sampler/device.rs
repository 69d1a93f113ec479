//! Token choice on the device: what a device that samples needs from the sampler
//! ([`DeviceSampling`]), and how its answers ([`DeviceChoice`]) go back through the
//! same bookkeeping as the host's (grammar commit and forced tokens, output counts).
//!
//! The sampler keeps every piece of per-sequence state on the host either way; for a
//! device step it flattens that state into plain arrays — one [`DeviceRow`] of
//! parameters per sampling sequence, each sequence's seen tokens with their counts
//! (instead of a vocabulary-sized array), and the grammar masks computed during the
//! forward pass — so the logits never leave the device.

use std::collections::HashMap;

use rill_proto::{SamplingParams, SeqId, SeqStep, TokenId};

use super::{Choice, MaskJob, Sampler, SeqState, watermark};

/// One sampling row: its sequence's parameters (the grammar is already a mask here)
/// and its state flattened.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRow {
    /// The row of the step's logits to choose from.
    pub logits_row: u32,
    pub params: SamplingParams,
    /// The watermark key of the previous token, when the watermark is on.
    pub watermark_key: Option<u32>,
    /// Position of the token being chosen (the random stream's counter).
    pub position: u64,
    /// Tokens so far (TGI's frequency penalty divides by it).
    pub seq_len: u32,
    /// This row's entries in [`DeviceSampling::seen`].
    pub seen: std::ops::Range<u32>,
    /// First word of this row's grammar mask in [`DeviceSampling::masks`].
    pub mask: Option<u32>,
    pub top_n: u32,
}

/// Everything a device needs to choose the step's tokens itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceSampling {
    pub rows: Vec<DeviceRow>,
    /// `(token, count in prompt and output, count in output)` for each row's seen
    /// tokens, rows one after the other (only rows whose penalties need them).
    pub seen: Vec<(u32, u32, u32)>,
    /// Grammar masks, `vocab.div_ceil(32)` words each.
    pub masks: Vec<u32>,
    pub vocab: usize,
    pub max_top_n: usize,
}

/// What the device chose for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceChoice {
    /// `None` when no token was allowed (every logit -∞ or NaN after the mask).
    pub token: Option<TokenId>,
    pub logprob: f32,
    pub top: Vec<(TokenId, f32)>,
}

/// A device step in flight: the sampling rows' states and grammar matchers, held
/// here until the device answers ([`Sampler::apply_device`]).
#[derive(Debug)]
pub struct DeviceStep {
    ids: Vec<SeqId>,
    states: Vec<Option<SeqState>>,
    masks: Vec<Option<MaskJob>>,
    /// Rows whose grammar failed before the step could sample them.
    failed: Vec<(SeqId, String)>,
    leftover: Vec<MaskJob>,
}

impl Sampler {
    /// Flatten the state of the sampling rows (`(step, logits row)`, in order) for a
    /// device, taking their states out until [`Sampler::apply_device`].
    pub fn device_sampling(
        &mut self,
        rows: &[(&SeqStep, usize)],
        masks: Vec<MaskJob>,
    ) -> (DeviceSampling, DeviceStep) {
        let words = self.vocab.div_ceil(32);
        let mut masks: HashMap<SeqId, MaskJob> = masks.into_iter().map(|m| (m.id, m)).collect();
        let mut ds = DeviceSampling { vocab: self.vocab, ..Default::default() };
        let mut step = DeviceStep {
            ids: Vec::new(),
            states: Vec::new(),
            masks: Vec::new(),
            failed: Vec::new(),
            leftover: Vec::new(),
        };
        for &(seq, logits_row) in rows {
            let state = self.states.remove(&seq.id);
            let mut job = masks.remove(&seq.id);
            if let Some(Err(e)) = job.as_mut().map(|j| std::mem::replace(&mut j.result, Ok(()))) {
                step.failed.push((seq.id, format!("grammar: {e}")));
                if let Some(state) = state {
                    self.states.insert(seq.id, state);
                }
                step.leftover.extend(job);
                continue;
            }
            let mut row = DeviceRow {
                logits_row: logits_row as u32,
                params: SamplingParams::default(),
                watermark_key: None,
                position: seq.end_pos() as u64,
                seq_len: seq.end_pos() as u32,
                seen: 0..0,
                mask: None,
                top_n: seq.top_n,
            };
            if let Some(st) = &state {
                let p = &st.params;
                row.params = SamplingParams { grammar: None, ..p.clone() };
                row.seq_len = st.seen as u32;
                row.watermark_key = st.last.filter(|_| p.watermark).map(watermark::key);
                let start = ds.seen.len() as u32;
                let empty = HashMap::new();
                let all = st.counts.as_ref().unwrap_or(&empty);
                let output = st.generated.as_ref().unwrap_or(&empty);
                for (&t, &c) in all {
                    ds.seen.push((t, c, output.get(&t).copied().unwrap_or(0)));
                }
                for (&t, &c) in output.iter().filter(|(t, _)| !all.contains_key(t)) {
                    ds.seen.push((t, c, c));
                }
                row.seen = start..ds.seen.len() as u32;
            }
            if let Some(j) = &job {
                row.mask = Some(ds.masks.len() as u32);
                ds.masks.extend_from_slice(&j.mask[..words.min(j.mask.len())]);
                ds.masks.resize(ds.masks.len().next_multiple_of(words.max(1)), 0);
            }
            ds.max_top_n = ds.max_top_n.max(seq.top_n as usize);
            ds.rows.push(row);
            step.ids.push(seq.id);
            step.states.push(state);
            step.masks.push(job);
        }
        step.leftover.extend(masks.into_values());
        (ds, step)
    }

    /// Take the device's answers (one per row of the [`DeviceSampling`], in order):
    /// the grammar sees each chosen token and offers what it forces, output counts
    /// grow, states go back. `None` (the device failed) restores everything as it was.
    pub fn apply_device(
        &mut self,
        step: DeviceStep,
        choices: Option<Vec<DeviceChoice>>,
    ) -> Vec<(SeqId, Result<Choice, String>)> {
        let DeviceStep { ids, states, masks, mut failed, leftover } = step;
        let mut out = Vec::with_capacity(ids.len() + failed.len());
        let mut choices = choices.map(Vec::into_iter);
        for ((id, state), job) in ids.into_iter().zip(states).zip(masks) {
            let choice = choices.as_mut().map(|c| match c.next() {
                Some(DeviceChoice { token: Some(token), logprob, top }) => {
                    Ok(Choice { token, logprob, top, forced: Vec::new() })
                }
                Some(DeviceChoice { token: None, .. }) => {
                    Err("no token is allowed here (every logit is -inf or NaN)".to_string())
                }
                None => Err("the device returned too few choices".to_string()),
            });
            let (mut job, mut choice) = (job, choice);
            if let (Some(job), Some(choice)) = (job.as_mut(), choice.as_mut()) {
                super::commit_grammar(job, choice);
            }
            self.put_back(id, state, job, choice.as_ref());
            out.extend(choice.map(|c| (id, c)));
        }
        self.restore(leftover);
        out.append(&mut failed.drain(..).map(|(id, e)| (id, Err(e))).collect());
        out
    }
}
