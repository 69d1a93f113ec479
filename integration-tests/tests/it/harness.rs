//! A minimal driver for `Runner::step`: sequences with their own prefill chunk
//! schedule, stepped together in one batch, each owning a disjoint range of KV
//! blocks. Enough to test the engine without the router's scheduler.

use std::path::Path;

use rill_backend::{Cpu, KvCacheSize, ModelDir, Precision, Runner, RunnerOptions};
use rill_proto::{BLOCK_SIZE, BlockId, ForwardBatch, SeqId, SeqStep, TokenId};

pub const BLOCKS_PER_SEQ: usize = 16;

/// The model in `dir` on the CPU, computing exactly (transformers in f32).
pub fn load(dir: &Path) -> (ModelDir, Runner<Cpu>) {
    load_with(dir, Precision::Exact)
}

/// The model in `dir` on the CPU at `precision`.
pub fn load_with(dir: &Path, precision: Precision) -> (ModelDir, Runner<Cpu>) {
    let model = ModelDir::open(dir).unwrap_or_else(|e| panic!("{e}"));
    let opts =
        RunnerOptions { kv_cache: KvCacheSize::Bytes(64 << 20), precision, ..Default::default() };
    let runner =
        Runner::load(dir, &model.config, Cpu::new(), &opts).unwrap_or_else(|e| panic!("{e}"));
    (model, runner)
}

/// One sequence to drive: its prompt, how to chunk it, how many tokens to generate.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    /// Sizes of the prefill chunks (the last one absorbs any rest).
    pub chunks: Vec<usize>,
    pub new_tokens: usize,
    /// Compute logits after every prefill chunk, not only the last.
    pub logits_every_chunk: bool,
    /// Steps to wait before starting (to mix prefill with others' decodes).
    pub delay: usize,
}

impl Job {
    pub fn new(prompt: &[u32], new_tokens: usize) -> Self {
        Job {
            prompt: prompt.to_vec(),
            chunks: vec![prompt.len()],
            new_tokens,
            logits_every_chunk: false,
            delay: 0,
        }
    }
}

/// What came out for one job: generated tokens and every logits row computed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
}

struct Live {
    job: Job,
    cached: usize,
    chunk: usize,
    seq: Vec<u32>,
    out: Outcome,
    blocks: Vec<BlockId>,
}

impl Live {
    fn done(&self) -> bool {
        self.out.tokens.len() >= self.job.new_tokens
    }
}

/// Run all jobs together, one batch per step, until every job has its tokens.
pub fn run(runner: &mut Runner<Cpu>, jobs: &[Job]) -> Vec<Outcome> {
    let mut live: Vec<Live> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| Live {
            job: job.clone(),
            cached: 0,
            chunk: 0,
            seq: job.prompt.clone(),
            out: Outcome::default(),
            blocks: (0..BLOCKS_PER_SEQ).map(|b| BlockId((i * BLOCKS_PER_SEQ + b) as u32)).collect(),
        })
        .collect();
    let mut step = 0;
    while live.iter().any(|l| !l.done()) {
        let mut batch = ForwardBatch { return_logits: true, ..Default::default() };
        let mut members = Vec::new();
        for (i, l) in live.iter_mut().enumerate() {
            if l.done() || step < l.job.delay {
                continue;
            }
            let prompt_len = l.job.prompt.len();
            let (tokens, sample) = if l.cached < prompt_len {
                let size = if l.chunk + 1 >= l.job.chunks.len() {
                    prompt_len - l.cached
                } else {
                    l.job.chunks[l.chunk].min(prompt_len - l.cached)
                };
                l.chunk += 1;
                let last = l.cached + size == prompt_len;
                (l.seq[l.cached..l.cached + size].to_vec(), last || l.job.logits_every_chunk)
            } else {
                (vec![*l.seq.last().unwrap()], true)
            };
            let end = l.cached + tokens.len();
            batch.seqs.push(SeqStep {
                sample,
                ..SeqStep::new(
                    SeqId(i as u64),
                    tokens.into_iter().map(TokenId).collect(),
                    l.cached,
                    l.blocks[..end.div_ceil(BLOCK_SIZE)].to_vec(),
                )
            });
            l.cached = end;
            members.push(i);
        }
        let out = runner.step(&batch).unwrap_or_else(|e| panic!("step {step}: {e}"));
        let mut sampled = out.sampled.into_iter();
        for (i, s) in members.into_iter().zip(&batch.seqs) {
            if !s.sample {
                continue;
            }
            let got = sampled.next().expect("one output per sampling sequence");
            assert_eq!(got.id, s.id);
            let l = &mut live[i];
            l.out.logits.push(got.logits.expect("asked for logits"));
            if l.cached >= l.job.prompt.len() {
                l.out.tokens.push(got.token.0);
                l.seq.push(got.token.0);
            }
        }
        step += 1;
    }
    live.into_iter().map(|l| l.out).collect()
}
