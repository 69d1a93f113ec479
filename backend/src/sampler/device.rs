//! Token choice on the device: the sampler's state flattened into what a device that
//! samples consumes ([`DeviceSampling`], the contract of `crate::sampling`), and how its
//! answers ([`RowChoice`]) go back through the
//! same bookkeeping as the host's (grammar commit and forced tokens, output counts).
//!
//! The sampler keeps every piece of per-sequence state on the host either way; for a
//! device step it flattens that state into plain arrays — one [`DeviceRow`] of
//! parameters per sampling sequence, each sequence's seen tokens with their counts
//! (instead of a vocabulary-sized array), and the grammar masks computed during the
//! forward pass — so the logits never leave the device.

use std::collections::HashMap;

use rill_proto::{SamplingParams, SeqId, SeqStep};

use rayon::prelude::*;

use super::{Choice, MaskJob, Sampler, SeqState};
use crate::sampling::{DeviceRow, DeviceSampling, RowChoice};

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
                row.watermark_key = st.last_key;
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
        choices: Option<Vec<RowChoice>>,
    ) -> Vec<(SeqId, Result<Choice, String>)> {
        let DeviceStep { ids, states, masks, mut failed, leftover } = step;
        let mut out = Vec::with_capacity(ids.len() + failed.len());
        let mut choices = choices.map(Vec::into_iter);
        for ((id, state), job) in ids.into_iter().zip(states).zip(masks) {
            let choice = choices.as_mut().map(|c| match c.next() {
                Some(RowChoice { token: Some(token), logprob, top }) => {
                    Ok(Choice { token, logprob, top, forced: Vec::new() })
                }
                Some(RowChoice { token: None, .. }) => {
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

/// The host's implementation of the sampling contract over the flattened state a device
/// receives: what a device that samples must return for `logits` (`[rows, vocab]`,
/// row-major; each [`DeviceRow`] reads its `logits_row`). The test device samples with
/// it, and the GPU kernel is checked against it (`kernels/emu/tests/sampling.rs`).
pub fn sample_flat(logits: &[f32], s: &DeviceSampling) -> Vec<RowChoice> {
    let (vocab, words) = (s.vocab, s.vocab.div_ceil(32));
    s.rows
        .par_iter()
        .map(|d| {
            let at = d.logits_row as usize * vocab;
            let mut row = logits[at..at + vocab].to_vec();
            let mask = d.mask.map(|m| &s.masks[m as usize..m as usize + words]);
            let choice = if d.params.is_greedy() && mask.is_none() {
                Ok(super::greedy(&mut row, d.top_n as usize))
            } else {
                let mut st = SeqState::new(SamplingParams { grammar: None, ..d.params.clone() });
                st.seen = d.seq_len as usize;
                st.last_key = d.watermark_key;
                let seen = &s.seen[d.seen.start as usize..d.seen.end as usize];
                if let Some(counts) = &mut st.counts {
                    counts.extend(seen.iter().filter(|e| e.1 > 0).map(|e| (e.0, e.1)));
                }
                if let Some(generated) = &mut st.generated {
                    generated.extend(seen.iter().filter(|e| e.2 > 0).map(|e| (e.0, e.2)));
                }
                super::choose(&mut st, &mut row, mask, d.position as usize, d.top_n as usize)
            };
            match choice {
                Ok(c) => RowChoice { token: Some(c.token), logprob: c.logprob, top: c.top },
                Err(_) => RowChoice { token: None, logprob: f32::NAN, top: Vec::new() },
            }
        })
        .collect()
}
