//! The Llama-family decoder (Llama 2/3/3.1/3.2, Mistral, Qwen2).
//!
//! Pre-norm blocks: `x += o(attn(rope(q(n(x))), rope(k(n(x))), v(n(x))))`, then
//! `x += down(silu(gate(n(x))) * up(n(x)))`; a final norm and the LM head run only
//! on the rows that will be sampled, and the final norm alone on the rows whose hidden
//! states an embedding request returns. Every op goes through the device, so the CPU
//! and CUDA engines share this file.

use std::cell::Cell;

use crate::config::{DType, ModelConfig};
use crate::device::{AttentionShape, Device, DeviceError, ForwardOutput, Precision, StepPlan};
use crate::error::LoadError;
use crate::weights::{HostTensor, WeightSource};

struct Linear<D: Device> {
    weight: D::Weight,
    bias: Option<D::Weight>,
}

struct Layer<D: Device> {
    input_norm: D::Weight,
    /// q, k and v projections fused into one `[q + 2 kv, hidden]` matrix.
    qkv: Linear<D>,
    o: Linear<D>,
    post_norm: D::Weight,
    /// gate and up projections fused into one `[2 intermediate, hidden]` matrix.
    gate_up: Linear<D>,
    down: Linear<D>,
    attention: AttentionShape,
}

/// A loaded Llama-family model on device `D`.
pub struct Llama<D: Device> {
    config: ModelConfig,
    embed: D::Weight,
    layers: Vec<Layer<D>>,
    norm: D::Weight,
    /// `None` with tied embeddings: the LM head is `embed`.
    lm_head: Option<D::Weight>,
    inv_freq: Vec<f32>,
}

impl<D: Device> std::fmt::Debug for Llama<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Loads tensors by name with their expected shapes onto the device.
struct Loader<'a, D: Device> {
    source: &'a dyn WeightSource,
    device: &'a D,
    /// What the linear layers are laid out for ([`Device::linear_weight`]).
    precision: Precision,
    /// A 16-bit weight matrix was loaded: the model is a bf16/f16 model.
    half: Cell<bool>,
}

impl<D: Device> Loader<'_, D> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<D::Weight, LoadError> {
        self.device.weight(self.source.load(name, shape)?)
    }

    /// A matrix [`Device::linear`] multiplies by (an LM head, or a tied embedding table).
    fn matrix(&self, tensor: HostTensor) -> Result<D::Weight, LoadError> {
        if tensor.data.dtype() != DType::F32 {
            self.half.set(true);
        }
        self.device.linear_weight(tensor, self.precision)
    }

    /// One projection: `{prefix}.weight` `[out, inp]` and, with `bias`, `{prefix}.bias`.
    fn linear(
        &self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear<D>, LoadError> {
        self.fused(prefix, &[(prefix.to_string(), out)], inp, bias)
    }

    /// Projections of the same input stacked into one matrix named `name`, in the
    /// order given (q/k/v, gate/up): one GEMM instead of several.
    fn fused(
        &self,
        name: &str,
        parts: &[(String, usize)],
        inp: usize,
        bias: bool,
    ) -> Result<Linear<D>, LoadError> {
        let load = |suffix: &str, shape: fn(usize, usize) -> Vec<usize>| {
            let mut tensors = parts
                .iter()
                .map(|(prefix, out)| {
                    self.source.load(&format!("{prefix}.{suffix}"), &shape(*out, inp))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tensor = match tensors.len() {
                1 => tensors.remove(0),
                _ => HostTensor::concat_rows(&format!("{name}.{suffix}"), tensors)?,
            };
            match tensor.shape.len() {
                2 => self.matrix(tensor),
                _ => self.device.weight(tensor),
            }
        };
        Ok(Linear {
            weight: load("weight", |out, inp| vec![out, inp])?,
            bias: if bias { Some(load("bias", |out, _| vec![out])?) } else { None },
        })
    }
}

impl<D: Device> Llama<D> {
    /// Load the weights `source` holds onto `device`. `precision` is what the model asks
    /// of the device where it has a choice; an f32 model always computes exactly.
    pub fn load(
        config: &ModelConfig,
        source: &dyn WeightSource,
        device: &D,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        let c = config;
        let ld = Loader { source, device, precision, half: Cell::new(false) };
        let (h, q_dim, kv_dim) =
            (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut layers = (0..c.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    input_norm: ld.tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
                    qkv: ld.fused(
                        &format!("{p}.self_attn.qkv_proj"),
                        &[
                            (format!("{p}.self_attn.q_proj"), q_dim),
                            (format!("{p}.self_attn.k_proj"), kv_dim),
                            (format!("{p}.self_attn.v_proj"), kv_dim),
                        ],
                        h,
                        c.qkv_bias,
                    )?,
                    o: ld.linear(&format!("{p}.self_attn.o_proj"), h, q_dim, c.o_bias)?,
                    post_norm: ld.tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    gate_up: ld.fused(
                        &format!("{p}.mlp.gate_up_proj"),
                        &[
                            (format!("{p}.mlp.gate_proj"), c.intermediate_size),
                            (format!("{p}.mlp.up_proj"), c.intermediate_size),
                        ],
                        h,
                        c.mlp_bias,
                    )?,
                    down: ld.linear(
                        &format!("{p}.mlp.down_proj"),
                        h,
                        c.intermediate_size,
                        c.mlp_bias,
                    )?,
                    attention: AttentionShape {
                        heads: c.num_heads,
                        kv_heads: c.num_kv_heads,
                        head_dim: c.head_dim,
                        window: c.sliding_windows[i],
                        precision,
                    },
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        if !ld.half.get() {
            layers.iter_mut().for_each(|l| l.attention.precision = Precision::Exact);
        }
        // Some tied checkpoints still ship `lm_head.weight`; use it when present.
        let lm_head = if !c.tie_word_embeddings || source.contains("lm_head.weight") {
            Some(ld.matrix(source.load("lm_head.weight", &[c.vocab_size, h])?)?)
        } else {
            None
        };
        // A tied table is the LM head too: laid out for `linear` (`embed` reads it either way).
        let embed = source.load("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let embed = match lm_head {
            Some(_) => device.weight(embed)?,
            None => ld.matrix(embed)?,
        };
        Ok(Llama {
            config: c.clone(),
            embed,
            layers,
            norm: ld.tensor("model.norm.weight", &[h])?,
            lm_head,
            inv_freq: crate::rope::inv_freq(&c.rope, c.head_dim),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// One forward pass over the planned rows; returns the logits of the sample
    /// rows, `[host.sample_rows.len(), vocab]`, and the final-norm hidden states of the
    /// hidden rows, `[host.hidden_rows.len(), hidden]` (empty, and nothing computed for
    /// it, when there are none). `plan` is `host` on the device.
    pub fn forward(
        &self,
        dev: &D,
        cache: &mut D::Cache,
        host: &StepPlan,
        plan: &D::Plan,
    ) -> Result<ForwardOutput<D::Activation>, DeviceError> {
        let c = &self.config;
        let rows = host.rows();
        let mut x = dev.activation(rows, c.hidden_size);
        dev.embed(&self.embed, plan, &mut x)?;
        let mut normed = dev.activation(rows, c.hidden_size);
        let empty = || dev.activation(0, 0);
        let (mut qkv, mut q, mut k, mut v) = (empty(), empty(), empty(), empty());
        let (mut attn, mut proj, mut gate_up, mut act) = (empty(), empty(), empty(), empty());
        let kv_dim = c.num_kv_heads * c.head_dim;
        let qkv_widths = [c.num_heads * c.head_dim, kv_dim, kv_dim];
        let linear = |x: &D::Activation, l: &Linear<D>, out: &mut D::Activation| {
            dev.linear(x, &l.weight, l.bias.as_ref(), out)
        };

        // Each residual add is fused with the norm that follows it (the next layer's
        // input norm, or this layer's post-attention norm); the last one is not, as the
        // final norm runs on gathered rows only.
        if let Some(first) = self.layers.first() {
            dev.rms_norm(&x, &first.input_norm, c.rms_norm_eps, &mut normed)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            linear(&normed, &layer.qkv, &mut qkv)?;
            dev.split_cols(&qkv, &qkv_widths, &mut [&mut q, &mut k, &mut v])?;
            dev.rope(&mut q, c.head_dim, plan)?;
            dev.rope(&mut k, c.head_dim, plan)?;
            dev.write_kv(cache, i, &k, &v, plan)?;
            dev.attention(&q, cache, i, layer.attention, plan, &mut attn)?;
            linear(&attn, &layer.o, &mut proj)?;
            dev.add_rms_norm(&mut x, &proj, &layer.post_norm, c.rms_norm_eps, &mut normed)?;

            linear(&normed, &layer.gate_up, &mut gate_up)?;
            dev.silu_mul(&gate_up, &mut act)?;
            linear(&act, &layer.down, &mut proj)?;
            match self.layers.get(i + 1) {
                Some(next) => {
                    dev.add_rms_norm(&mut x, &proj, &next.input_norm, c.rms_norm_eps, &mut normed)?
                }
                None => dev.add_assign(&mut x, &proj)?,
            }
        }

        // The final norm is per row, so gathering first changes no value.
        let mut hidden = empty();
        if !host.hidden_rows.is_empty() {
            let mut rows = empty();
            dev.gather_hidden_rows(&x, plan, &mut rows)?;
            dev.rms_norm(&rows, &self.norm, c.rms_norm_eps, &mut hidden)?;
        }
        let mut last = empty();
        dev.gather_sample_rows(&x, plan, &mut last)?;
        dev.rms_norm(&last, &self.norm, c.rms_norm_eps, &mut normed)?;
        let mut logits = empty();
        dev.linear(&normed, self.lm_head.as_ref().unwrap_or(&self.embed), None, &mut logits)?;
        Ok(ForwardOutput { logits, hidden })
    }
}
