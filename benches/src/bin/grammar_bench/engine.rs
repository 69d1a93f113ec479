//! Masks during real forward passes: the runner computes a step's grammar masks on
//! their own thread while the forward pass runs, so sampling should never wait for
//! them when the forward pass is the longer of the two.

use std::path::Path;

use anyhow::Result;
use rill_backend::{Cpu, DType, KvCacheSize, LoadFormat, ModelConfig, Runner, RunnerOptions};
use rill_proto::{BlockId, ForwardBatch, Grammar, SamplingParams, SeqId, SeqStep, TokenId};
use serde_json::{Value, json};

use super::{ms, percentile, us};

/// Decode `steps` tokens for `batch` grammar-constrained sequences on the model
/// `config` describes (dummy bf16 weights, vocabulary resized to `vocab`).
pub fn overlap(
    config: &Path,
    vocab: usize,
    grammar: &Grammar,
    batch: usize,
    steps: usize,
) -> Result<Value> {
    let mut c = ModelConfig::from_file(config)?;
    c.vocab_size = vocab;
    let dir = config.parent().unwrap_or(Path::new("."));
    // Room for the prompt, every sampled token and what the grammar forces.
    let per_seq = rill_proto::blocks_for(16 + 8 * (steps + 1));
    let opts = RunnerOptions {
        kv_cache: KvCacheSize::Tokens(batch * per_seq * rill_proto::BLOCK_SIZE),
        load_format: LoadFormat::Dummy(DType::Bf16),
        ..RunnerOptions::default()
    };
    eprintln!(
        "loading {} layers x {} hidden, vocabulary {vocab}, dummy bf16 weights",
        c.num_layers, c.hidden_size
    );
    let mut runner = Runner::load(dir, &c, Cpu::new(), &opts)?;
    let table =
        |i: usize| (i * per_seq..(i + 1) * per_seq).map(|b| BlockId(b as u32)).collect::<Vec<_>>();
    let mut next: Vec<Vec<TokenId>> = Vec::new();
    let (mut forward, mut masks, mut waits, mut sampling) = (vec![], vec![], vec![], vec![]);
    let mut pos = vec![0usize; batch];
    for step in 0..=steps {
        let seqs: Vec<SeqStep> = (0..batch)
            .map(|i| {
                let tokens = if step == 0 {
                    (0..16).map(|t| TokenId((t * 7 + i) as u32 % 256)).collect()
                } else {
                    next[i].clone()
                };
                SeqStep {
                    sampling: (step == 0).then(|| {
                        Box::new(SamplingParams {
                            do_sample: true,
                            seed: i as u64,
                            grammar: Some(grammar.clone()),
                            ..Default::default()
                        })
                    }),
                    ..SeqStep::new(SeqId(i as u64), tokens, pos[i], table(i))
                }
            })
            .collect();
        let out = runner.step(&ForwardBatch { seqs: seqs.clone(), ..Default::default() })?;
        if !out.failed.is_empty() {
            anyhow::bail!("a grammar failed: {:?}", out.failed);
        }
        for (i, s) in seqs.iter().enumerate() {
            pos[i] = s.end_pos();
        }
        // The sampled token and what the grammar forced after it run next.
        next = out.sampled.iter().map(|s| [&[s.token][..], &s.forced].concat()).collect();
        let st = runner.last_step_stats();
        if step > 0 {
            forward.push(ms(st.forward));
            masks.push(ms(st.masks));
            waits.push(us(st.mask_wait));
            sampling.push(ms(st.sampling));
        }
    }
    for v in [&mut forward, &mut masks, &mut waits, &mut sampling] {
        v.sort_by(f64::total_cmp);
    }
    let report = json!({
        "batch": batch,
        "steps": forward.len(),
        "forward_ms_p50": percentile(&forward, 50.0),
        "masks_ms_p50": percentile(&masks, 50.0),
        "masks_ms_max": masks.last(),
        "mask_wait_us_p50": percentile(&waits, 50.0),
        "mask_wait_us_max": waits.last(),
        "sampling_ms_p50": percentile(&sampling, 50.0),
    });
    eprintln!(
        "engine: batch {batch}, forward p50 {:.1} ms; masks (all {batch}, own thread) p50 {:.3} ms, max {:.3} ms; \
         sampling waited p50 {:.1} us, max {:.1} us; sampling p50 {:.3} ms",
        percentile(&forward, 50.0),
        percentile(&masks, 50.0),
        masks.last().copied().unwrap_or(0.0),
        percentile(&waits, 50.0),
        waits.last().copied().unwrap_or(0.0),
        percentile(&sampling, 50.0),
    );
    Ok(report)
}
