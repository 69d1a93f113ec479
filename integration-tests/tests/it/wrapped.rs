//! The CPU device with five knobs, to drive the runner's device paths without a GPU:
//! `fail` makes the step fail as a device fault would (at `to_host`); `fail_attention`
//! makes an op fail as a failed launch would; `on_device` makes the device
//! choose tokens itself ([`Device::sample`]) from the flattened state, with the host's
//! implementation of the sampling contract (`sample_flat`; the GPU kernel is held to the
//! same contract by `kernels/emu/tests/sampling.rs`), so the runner's and the sampler's
//! device plumbing is tested against the host sampler; `pad_buckets` runs
//! plain decode steps padded to a bucket, as the CUDA device's graphs do
//! ([`Device::forward`], [`StepPlan::pad_decode`]); `memory` makes it a device with memory
//! of its own ([`Device::memory_info`]), as a GPU is, and `events` logs what loading asks
//! of it, in order.

use rill_backend::device::cpu::Mat;
use rill_backend::device::cuda::bucket_for;
use rill_backend::device::{
    AttentionShape, Device, DeviceError, Forward, ForwardOutput, KvLayout, Precision, StepPlan,
};
use rill_backend::sampler::sample_flat;
use rill_backend::sampling::{DeviceSampling, RowChoice};
use rill_backend::weights::HostTensor;
use rill_backend::{Cpu, LoadError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Wrapped {
    cpu: Cpu,
    pub fail: AtomicBool,
    /// Make `attention` fail, as a failed launch would.
    pub fail_attention: AtomicBool,
    /// `linear` calls so far.
    pub linears: AtomicUsize,
    on_device: bool,
    pad_buckets: Vec<usize>,
    /// Steps that ran padded.
    pub padded_steps: AtomicUsize,
    /// Rows chosen by `sample` (on the "device").
    pub sampled_rows: AtomicUsize,
    memory: Option<(usize, usize)>,
    /// `memory_info`, `kv_cache {blocks}`, `plan {rows}`, `replay {sizes:?}`, in order.
    pub events: Mutex<Vec<String>>,
    /// The precision the last `attention` call was asked for.
    pub attention_precision: Mutex<Option<Precision>>,
}

impl Wrapped {
    pub fn new(on_device: bool) -> Self {
        Wrapped {
            cpu: Cpu::new(),
            fail: AtomicBool::new(false),
            fail_attention: AtomicBool::new(false),
            linears: AtomicUsize::new(0),
            on_device,
            pad_buckets: Vec::new(),
            padded_steps: AtomicUsize::new(0),
            sampled_rows: AtomicUsize::new(0),
            memory: None,
            events: Mutex::default(),
            attention_precision: Mutex::default(),
        }
    }

    /// A device that says it has `(free, total)` bytes of its own memory.
    pub fn with_memory(free: usize, total: usize) -> Self {
        Wrapped { memory: Some((free, total)), ..Wrapped::new(false) }
    }

    fn log(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }

    /// Pad plain decode steps to the smallest of `buckets` (ascending) that holds them.
    pub fn padding(buckets: &[usize]) -> Self {
        Wrapped { pad_buckets: buckets.to_vec(), ..Wrapped::new(false) }
    }
}

type W = <Cpu as Device>::Weight;
type C = <Cpu as Device>::Cache;
type P = <Cpu as Device>::Plan;

impl Device for Wrapped {
    type Weight = W;
    type Activation = Mat;
    type Cache = C;
    type Plan = P;
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.cpu.run(work)
    }
    fn weight(&self, t: HostTensor) -> Result<W, LoadError> {
        self.cpu.weight(t)
    }
    fn linear_weight(&self, t: HostTensor, precision: Precision) -> Result<W, LoadError> {
        self.cpu.linear_weight(t, precision)
    }
    fn activation(&self, rows: usize, cols: usize) -> Mat {
        self.cpu.activation(rows, cols)
    }
    fn kv_cache(&self, layout: KvLayout) -> Result<C, LoadError> {
        self.log(format!("kv_cache {}", layout.num_blocks));
        self.cpu.kv_cache(layout)
    }
    fn plan(&self, plan: &StepPlan) -> Result<P, DeviceError> {
        self.log(format!("plan {}", plan.rows()));
        self.cpu.plan(plan)
    }
    fn memory_info(&self) -> Result<Option<(usize, usize)>, DeviceError> {
        self.log("memory_info".into());
        Ok(self.memory)
    }
    fn prepare_replay(
        &self,
        _cache: &mut C,
        _config: &rill_backend::ModelConfig,
        batch_sizes: &[usize],
        _forward: &mut Forward<'_, Self>,
    ) -> Option<String> {
        self.log(format!("replay {batch_sizes:?}"));
        None
    }
    fn forward(
        &self,
        cache: &mut C,
        host: &StepPlan,
        forward: &mut Forward<'_, Self>,
    ) -> Result<ForwardOutput<Mat>, DeviceError> {
        let bucket = bucket_for(&self.pad_buckets, host.seqs.len());
        let Some(bucket) = bucket.filter(|_| host.is_plain_decode()) else {
            let plan = self.plan(host)?;
            return forward(cache, host, &plan);
        };
        self.padded_steps.fetch_add(1, Ordering::Relaxed);
        let mut padded = host.clone();
        padded.pad_decode(bucket);
        let plan = self.plan(&padded)?;
        let mut out = forward(cache, &padded, &plan)?;
        // The real rows come first.
        out.logits.rows = host.rows();
        out.logits.data.truncate(out.logits.rows * out.logits.cols);
        Ok(out)
    }
    fn embed(&self, table: &W, plan: &P, out: &mut Mat) -> Result<(), DeviceError> {
        self.cpu.embed(table, plan, out)
    }
    fn linear(&self, x: &Mat, w: &W, bias: Option<&W>, out: &mut Mat) -> Result<(), DeviceError> {
        self.linears.fetch_add(1, Ordering::Relaxed);
        self.cpu.linear(x, w, bias, out)
    }
    fn rms_norm(&self, x: &Mat, w: &W, eps: f32, out: &mut Mat) -> Result<(), DeviceError> {
        self.cpu.rms_norm(x, w, eps, out)
    }
    fn rope(&self, x: &mut Mat, head_dim: usize, plan: &P) -> Result<(), DeviceError> {
        self.cpu.rope(x, head_dim, plan)
    }
    fn write_kv(
        &self,
        cache: &mut C,
        layer: usize,
        k: &Mat,
        v: &Mat,
        plan: &P,
    ) -> Result<(), DeviceError> {
        self.cpu.write_kv(cache, layer, k, v, plan)
    }
    fn attention(
        &self,
        q: &Mat,
        cache: &C,
        layer: usize,
        shape: AttentionShape,
        plan: &P,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        *self.attention_precision.lock().unwrap() = Some(shape.precision);
        if self.fail_attention.load(Ordering::Relaxed) {
            let message = format!("attention of layer {layer}: injected launch failure");
            return Err(DeviceError { device: "wrapped", message });
        }
        self.cpu.attention(q, cache, layer, shape, plan, out)
    }
    fn silu_mul(&self, gate_up: &Mat, out: &mut Mat) -> Result<(), DeviceError> {
        self.cpu.silu_mul(gate_up, out)
    }
    fn split_cols(
        &self,
        x: &Mat,
        widths: &[usize],
        outs: &mut [&mut Mat],
    ) -> Result<(), DeviceError> {
        self.cpu.split_cols(x, widths, outs)
    }
    fn add_assign(&self, x: &mut Mat, y: &Mat) -> Result<(), DeviceError> {
        self.cpu.add_assign(x, y)
    }
    fn add_rms_norm(
        &self,
        x: &mut Mat,
        y: &Mat,
        w: &W,
        eps: f32,
        out: &mut Mat,
    ) -> Result<(), DeviceError> {
        self.cpu.add_rms_norm(x, y, w, eps, out)
    }
    fn gather_sample_rows(&self, x: &Mat, plan: &P, out: &mut Mat) -> Result<(), DeviceError> {
        self.cpu.gather_sample_rows(x, plan, out)
    }
    fn gather_hidden_rows(&self, x: &Mat, plan: &P, out: &mut Mat) -> Result<(), DeviceError> {
        self.cpu.gather_hidden_rows(x, plan, out)
    }
    fn samples_tokens(&self) -> bool {
        self.on_device
    }
    fn sample(&self, logits: &Mat, s: &DeviceSampling) -> Result<Vec<RowChoice>, DeviceError> {
        self.sampled_rows.fetch_add(s.rows.len(), Ordering::Relaxed);
        Ok(sample_flat(&self.to_host(logits)?, s))
    }
    fn to_host(&self, x: &Mat) -> Result<Vec<f32>, DeviceError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(DeviceError { device: "faulty", message: "injected fault".into() });
        }
        self.cpu.to_host(x)
    }
}
