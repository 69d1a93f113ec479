//! Decode steps as CUDA graphs.
//!
//! A decode step of a large model is a few hundred small launches (per layer: norms, GEMMs,
//! rope, the K/V write, attention, activations); at small batch sizes launching them costs
//! as much as running them. So, like vLLM and TGI, the device records the whole forward
//! pass of a plain decode step ([`StepPlan::is_plain_decode`]) once per batch-size bucket
//! and replays it with one `cuGraphLaunch`.
//!
//! A graph fixes every address and every launch argument, so:
//! - A step of `n` sequences runs the graph of the smallest bucket `b >= n`, padded with
//!   `b - n` sequences that store no K/V and whose rows nobody reads
//!   ([`StepPlan::pad_decode`]); the real rows' logits do not depend on the padding.
//! - The step's metadata goes into buffers that live as long as the graph
//!   ([`PlanArrays::with_capacity`]), copied in before each launch, in stream order.
//! - The attention launch's host arguments are bounds, not the step's values: the model's
//!   maximum context (the decode kernel's partitioning depends on each sequence's own
//!   length, so results are those of an eager step) and one row per sequence.
//! - Every activation of a recorded pass comes from an [`Arena`]: the pass's `i`-th
//!   allocation gets buffer `i`, the same in every pass. Buckets are recorded largest
//!   first and share the arena (graphs on one stream never run at once), so the graphs
//!   together take one large decode step's activations. The split-K workspace and the
//!   16-bit GEMM input are the arena's too (a separate [`Scratch`], swapped in while
//!   recording, so eager steps can grow theirs without freeing memory a graph uses).
//! - cuBLAS works in a workspace set once on its handle (`gemm.rs`), so recorded GEMMs
//!   never allocate.
//!
//! Recording a bucket runs its forward pass twice: eagerly (kernels load, the arena and
//! workspaces reach their sizes), then under stream capture, where nothing may allocate
//! (an allocation is an error, not a silent graph memory node). The padded step stores
//! nothing in the cache, so recording does not touch the sequences' K/V. If anything
//! fails, the device logs why and runs every step eagerly.
//!
//! The logits of the real rows are copied out of the graph's output into a fresh matrix:
//! the graph's buffer is overwritten by its next launch.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, DevicePtr};

use super::memory::{CudaKvCache, CudaMat, CudaPlan, PlanArrays};
use super::{Cuda, OpError, Scratch};
use crate::config::ModelConfig;
use crate::device::{DeviceError, Forward, StepPlan};

/// TGI's `--cuda-graphs` default extended to 256: the buckets share one arena, so larger
/// ones cost only the largest step's activations.
pub const DEFAULT_BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Buffers handed out to a recorded forward pass in allocation order.
#[derive(Debug, Default)]
pub(super) struct Arena {
    bufs: Vec<CudaSlice<f32>>,
    /// Buffers a later, larger request replaced: graphs recorded earlier still use them.
    retired: Vec<CudaSlice<f32>>,
    next: usize,
    /// The stream is capturing: nothing may be allocated.
    pub capturing: bool,
}

impl Arena {
    /// Start a pass: the next allocation gets the first buffer again.
    pub fn rewind(&mut self, capturing: bool) {
        self.next = 0;
        self.capturing = capturing;
    }

    /// The pass's next allocation, `n` floats: buffer `next` (allocated or enlarged now if
    /// needed, never while capturing), as a matrix buffer the arena keeps owning.
    pub fn take(&mut self, stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<f32>, OpError> {
        let i = self.next;
        let fits = self.bufs.get(i).is_some_and(|b| b.len() >= n);
        if !fits {
            if self.capturing {
                return Err(OpError::Shape(format!(
                    "allocation {i} of {n} floats while capturing a CUDA graph (not made by the eager pass)"
                )));
            }
            let buf = stream.alloc_zeros::<f32>(n.max(1))?;
            match self.bufs.get_mut(i) {
                Some(old) => self.retired.push(std::mem::replace(old, buf)),
                None => self.bufs.push(buf),
            }
        }
        self.next += 1;
        let (ptr, _) = self.bufs[i].device_ptr(stream);
        // SAFETY: `ptr` is the start of an allocation of at least `n` f32s that the arena
        // owns (and frees) and keeps for as long as the device lives, past every graph that
        // recorded it; the matrix that gets this alias is marked borrowed and lets go of it
        // without freeing it (`CudaMat::set_data`). Event tracking is off on this context,
        // so the alias carries no events of its own.
        Ok(unsafe { stream.upgrade_device_ptr(ptr, n) })
    }
}

/// One bucket's recording.
struct DecodeGraph {
    bucket: usize,
    graph: CudaGraph,
    /// The graph's inputs (written before each launch) and host bounds.
    plan: CudaPlan,
    /// Its output, `[bucket, vocab]`, in the arena.
    logits: CudaMat,
}

/// The device's decode graphs and the memory they share.
#[derive(Default)]
pub(super) struct Graphs {
    /// Buckets to record (`--cuda-graphs`), ascending; empty turns graphs off.
    pub buckets: Vec<usize>,
    /// Ascending by bucket; dropped before `memory`.
    recorded: Vec<DecodeGraph>,
    memory: Scratch,
    /// Block-table entries a sequence may have (its maximum context).
    blocks_per_seq: usize,
    /// Recorded graphs are not replayed (benchmarks compare with eager steps).
    eager: bool,
}

// SAFETY: a `CudaGraph` holds raw driver handles, which CUDA lets any thread use as long
// as calls on one graph are serialised; the device keeps its graphs behind a mutex and only
// touches them with it held.
unsafe impl Send for Graphs {}

impl std::fmt::Debug for Graphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recorded: Vec<usize> = self.recorded.iter().map(|g| g.bucket).collect();
        f.debug_struct("Graphs")
            .field("buckets", &self.buckets)
            .field("recorded", &recorded)
            .finish_non_exhaustive()
    }
}

/// `--cuda-graphs` as a bucket list: sorted, without duplicates; 0 anywhere turns graphs off.
pub fn parse_buckets(s: &str) -> Result<Vec<usize>, String> {
    let mut buckets = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: usize =
            part.parse().map_err(|_| format!("`{part}` is not a batch size (in `{s}`)"))?;
        if n == 0 {
            return Ok(Vec::new());
        }
        buckets.push(n);
    }
    buckets.sort_unstable();
    buckets.dedup();
    Ok(buckets)
}

/// The smallest of the (ascending) `buckets` that holds `n` sequences.
pub fn bucket_for(buckets: &[usize], n: usize) -> Option<usize> {
    buckets.iter().copied().find(|&b| b >= n)
}

/// Block-table entries a graph of `bucket` sequences has room for.
fn block_capacity(bucket: usize, blocks_per_seq: usize) -> usize {
    bucket * blocks_per_seq
}

impl Graphs {
    /// The buckets recorded, ascending.
    pub fn recorded(&self) -> Vec<usize> {
        self.recorded.iter().map(|g| g.bucket).collect()
    }

    /// The graph that can run `host`, if any.
    fn graph_for(&mut self, host: &StepPlan) -> Option<&mut DecodeGraph> {
        if self.eager || host.seqs.is_empty() || !host.is_plain_decode() {
            return None;
        }
        let (n, blocks_per_seq) = (host.seqs.len(), self.blocks_per_seq);
        // `recorded` is ascending: the first that holds the step is the smallest.
        let g = self.recorded.iter_mut().find(|g| g.bucket >= n)?;
        // One more entry per padding sequence; a longer table runs eagerly.
        let room = block_capacity(g.bucket, blocks_per_seq);
        (host.block_tables.len() + g.bucket - n <= room).then_some(g)
    }
}

impl Cuda {
    /// Replay recorded graphs (the default) or run every step eagerly.
    pub fn replay_graphs(&self, replay: bool) {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).eager = !replay;
    }

    /// The buckets that have a recorded graph, ascending.
    pub fn recorded_graphs(&self) -> Vec<usize> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).recorded()
    }

    /// Record a graph for each of `buckets` (ascending; `--cuda-graphs`), largest first (see
    /// the module documentation); none runs every step eagerly.
    pub(super) fn record_graphs(
        &self,
        cache: &mut CudaKvCache,
        config: &ModelConfig,
        buckets: &[usize],
        forward: &mut Forward<'_, Cuda>,
    ) -> Option<String> {
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs.buckets = buckets.to_vec();
        if graphs.buckets.is_empty() {
            return None;
        }
        graphs.blocks_per_seq = rill_proto::blocks_for(config.max_position_embeddings.max(1));
        let template = StepPlan { rope_half: config.head_dim / 2, ..StepPlan::default() };
        // Ops use the graphs' memory while recording; eager steps keep theirs.
        let mut memory = std::mem::take(&mut graphs.memory);
        memory.arena.get_or_insert_with(Arena::default);
        std::mem::swap(&mut *self.scratch.lock().unwrap_or_else(|e| e.into_inner()), &mut memory);
        let mut result = Ok(());
        for &bucket in graphs.buckets.clone().iter().rev() {
            let blocks = block_capacity(bucket, graphs.blocks_per_seq);
            match self.record_bucket(cache, config, &template, bucket, blocks, forward) {
                Ok(g) => graphs.recorded.insert(0, g),
                Err(e) => {
                    result = Err(format!("recording the batch-{bucket} decode graph: {e}"));
                    break;
                }
            }
        }
        std::mem::swap(&mut *self.scratch.lock().unwrap_or_else(|e| e.into_inner()), &mut memory);
        graphs.memory = memory;
        match result {
            Ok(()) => Some(format!(
                "decode steps of up to {:?} sequences run as CUDA graphs",
                graphs.recorded()
            )),
            Err(e) => {
                tracing::warn!("decode steps run without CUDA graphs: {e}");
                graphs.recorded.clear();
                graphs.memory = Scratch::default();
                None
            }
        }
    }

    fn record_bucket(
        &self,
        cache: &mut CudaKvCache,
        config: &ModelConfig,
        template: &StepPlan,
        bucket: usize,
        blocks: usize,
        forward: &mut Forward<'_, Cuda>,
    ) -> Result<DecodeGraph, String> {
        let mut host = template.clone();
        host.pad_decode(bucket);
        let mut plan = CudaPlan::host_values(&host);
        // Launch arguments must hold for every step the graph will run.
        plan.max_context = config.max_position_embeddings.max(1);
        let mut arrays =
            PlanArrays::with_capacity(&self.stream, bucket, blocks, template.rope_half)
                .map_err(|e| format!("allocating the graph's inputs: {e}"))?;
        arrays.write(&self.stream, &host)?;
        plan.arrays = Some(arrays);

        // The eager pass sizes the arena and the workspaces.
        self.rewind_arena(false);
        forward(cache, &host, &plan).map_err(|e| format!("eager pass: {e}"))?;
        self.rewind_arena(true);
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.stream.begin_capture(mode).map_err(|e| format!("beginning the capture: {e}"))?;
        // A decode step has no hidden rows: its `hidden` is empty, nothing was computed.
        let captured = forward(cache, &host, &plan);
        // Always end the capture, so the stream is usable whatever happened.
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        self.rewind_arena(false);
        let logits = captured.map_err(|e| format!("captured pass: {e}"))?.logits;
        let graph = graph
            .map_err(|e| format!("ending the capture: {e}"))?
            .ok_or("the capture recorded nothing")?;
        graph.upload().map_err(|e| format!("uploading the graph: {e}"))?;
        Ok(DecodeGraph { bucket, graph, plan, logits })
    }

    fn rewind_arena(&self, capturing: bool) {
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(arena) = scratch.arena.as_mut() {
            arena.rewind(capturing);
        }
    }

    /// Run `host` by replaying a recorded graph, if one fits: the logits of its rows, or
    /// why the replay failed. `None`: run it eagerly.
    pub(super) fn replay_decode(&self, host: &StepPlan) -> Option<Result<CudaMat, DeviceError>> {
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let g = graphs.graph_for(host)?;
        let mut padded = host.clone();
        padded.pad_decode(g.bucket);
        let mut out = CudaMat::empty();
        let replayed = self.op("replaying a decode graph", || {
            let arrays = g.plan.arrays.as_mut().ok_or(OpError::Missing)?;
            arrays.write(&self.stream, &padded).map_err(OpError::Shape)?;
            g.graph.launch()?;
            let (rows, vocab) = (host.rows(), g.logits.cols);
            self.ensure(&mut out, rows, vocab)?;
            let src = g.logits.data.as_ref().ok_or(OpError::Missing)?;
            let dst = out.data.as_mut().ok_or(OpError::Missing)?;
            self.stream.memcpy_dtod(&src.slice(..rows * vocab), dst)?;
            Ok(())
        });
        Some(replayed.map(|()| out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_like_tgi_s_flag() {
        assert_eq!(parse_buckets("1,2,4,8,16,32").unwrap(), [1, 2, 4, 8, 16, 32]);
        assert_eq!(parse_buckets(" 8, 1,8 ,2").unwrap(), [1, 2, 8]);
        assert_eq!(parse_buckets("0").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_buckets("").unwrap(), Vec::<usize>::new());
        let err = parse_buckets("1,two").unwrap_err();
        assert!(err.contains("`two`"), "{err}");
    }

    #[test]
    fn a_step_runs_in_the_smallest_bucket_that_holds_it() {
        let b = DEFAULT_BUCKETS;
        assert_eq!(bucket_for(&b, 1), Some(1));
        assert_eq!(bucket_for(&b, 3), Some(4));
        assert_eq!(bucket_for(&b, 33), Some(64));
        assert_eq!(bucket_for(&b, 256), Some(256));
        assert_eq!(bucket_for(&b, 257), None);
        assert_eq!(bucket_for(&[], 1), None);
    }
}
