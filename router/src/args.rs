//! `rill`'s command line: every flag, with its environment variable and default.

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when a GPU is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// How a model computes (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 arithmetic everywhere: transformers in f32, bit for bit on the CPU.
    Exact,
    /// A 16-bit model computes in its dtype where the device can: a GPU's tensor cores;
    /// on the CPU, linear layers on activations rounded to the weights' dtype.
    Fast,
}

impl From<PrecisionArg> for rill_backend::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Exact => rill_backend::Precision::Exact,
            PrecisionArg::Fast => rill_backend::Precision::Fast,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoadFormatArg {
    /// The directory's safetensors files.
    Safetensors,
    /// Random weights for the model config.json describes (benchmarks).
    Dummy,
}

/// A weight dtype (`--dtype`), with transformers' and the short names as aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    #[value(alias = "bf16")]
    Bfloat16,
    #[value(alias = "f16", alias = "half")]
    Float16,
    #[value(alias = "f32", alias = "float")]
    Float32,
}

impl From<DTypeArg> for rill_backend::config::DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::Bfloat16 => Self::Bf16,
            DTypeArg::Float16 => Self::F16,
            DTypeArg::Float32 => Self::F32,
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "rill", version, about = "Rill: a streaming text-generation server")]
pub struct Args {
    /// A model directory, or a Hugging Face id found in the local hub cache.
    /// Default: the small demo model bundled with the repository (`models/demo`).
    #[arg(long, env = "MODEL_ID")]
    pub model_id: Option<String>,
    /// Address to listen on. Not read from `HOSTNAME`, as TGI does: Kubernetes sets that
    /// to the pod's name, which is no address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub hostname: String,
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Requests in flight at once; more are refused with 429.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 128)]
    pub max_concurrent_requests: usize,
    #[arg(long, env = "MAX_BEST_OF", default_value_t = 2)]
    pub max_best_of: usize,
    /// Most choices one OpenAI request may ask for (`n`); each is a generation of its own.
    #[arg(long, env = "MAX_N", default_value_t = 8)]
    pub max_n: usize,
    /// A name clients may give as `model` on the OpenAI routes (repeatable; vLLM's
    /// flag). Default: the --model-id as given, and the model directory's name. The
    /// first is the name reported back.
    #[arg(long = "served-model-name", env = "SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_names: Vec<String>,
    /// A chat template to use instead of the model's: a file, or the template itself.
    #[arg(long, env = "CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
    /// How the model writes tool calls when it chooses to (`tool_choice: "auto"`):
    /// hermes, llama3_json or mistral. Default: detected from the chat template.
    #[arg(long, env = "TOOL_CALL_SYNTAX")]
    pub tool_call_syntax: Option<rill_router::openai::tools::ToolSyntax>,
    #[arg(long, env = "MAX_STOP_SEQUENCES", default_value_t = 4)]
    pub max_stop_sequences: usize,
    #[arg(long, env = "MAX_TOP_N_TOKENS", default_value_t = 5)]
    pub max_top_n_tokens: u32,
    /// Longest prompt (default: max total tokens - 1).
    #[arg(long, env = "MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,
    /// Longest prompt + generation (default: the model's maximum, capped by the KV cache).
    #[arg(long, env = "MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// Tokens one engine step may run (decodes + prefill chunks). Default on the
    /// CPU: 128, which bounds how long a prefill chunk stalls running streams
    /// without costing throughput (prefill is compute-bound from ~16 rows on); on a
    /// GPU: 4096 (TGI's).
    #[arg(long, env = "MAX_BATCH_PREFILL_TOKENS")]
    pub max_batch_prefill_tokens: Option<usize>,
    /// Sequences one engine step may hold (default: max concurrent requests).
    #[arg(long, env = "MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Keep the KV blocks of finished requests and reuse them for later requests whose
    /// prompt starts with the same tokens (automatic prefix caching; outputs are the same
    /// to the bit either way).
    #[arg(long, env = "PREFIX_CACHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_caching: bool,
    /// Publish the prefix cache's changes as vLLM's KV events (msgpack over ZeroMQ PUB)
    /// on this endpoint, e.g. `tcp://*:5557`, for prefix-aware routers. Off by default.
    #[arg(long, env = "KV_EVENTS_ENDPOINT")]
    pub kv_events_endpoint: Option<String>,
    /// The topic frame of every KV-event message.
    #[arg(long, env = "KV_EVENTS_TOPIC", default_value = "kv-events")]
    pub kv_events_topic: String,
    /// Where to run the model.
    #[arg(long, env = "DEVICE", value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Weight source (`dummy` fills the model with random weights of `--dtype`).
    #[arg(long, env = "LOAD_FORMAT", value_enum, default_value_t = LoadFormatArg::Safetensors)]
    pub load_format: LoadFormatArg,
    /// Convert every weight to this dtype at load; default: keep the checkpoint's, and
    /// bfloat16 for `--load-format dummy`.
    #[arg(long, env = "DTYPE", value_enum)]
    pub dtype: Option<DTypeArg>,
    /// `exact`: f32 arithmetic everywhere (transformers in f32, bit for bit on the CPU);
    /// `fast`: a bf16/f16 model computes in its dtype where the device can (a GPU's
    /// prefill attention on bf16 tensor cores, as its GEMMs). An f32 model is exact in
    /// either mode; the CPU is exact in either mode today.
    #[arg(long, env = "PRECISION", value_enum, default_value_t = PrecisionArg::Fast)]
    pub precision: PrecisionArg,
    /// Memory for the paged KV cache, in MiB (default: 1024 on the CPU; on a GPU, what
    /// free memory allows, see --cuda-memory-fraction).
    #[arg(long, env = "KV_CACHE_MEMORY_MIB")]
    pub kv_cache_memory_mib: Option<usize>,
    /// On a GPU, the share of the memory left free by the weights and the largest
    /// step's activations that the KV cache takes, when neither --kv-cache-memory-mib
    /// nor --max-batch-total-tokens sizes it.
    #[arg(long, env = "CUDA_MEMORY_FRACTION", default_value_t = 0.9)]
    pub cuda_memory_fraction: f64,
    /// Decode batch sizes recorded as CUDA graphs, comma-separated (TGI's flag); `0`
    /// turns graphs off. Sizes past the first one that holds --max-batch-size are dropped.
    #[arg(long, env = "CUDA_GRAPHS", value_parser = parse_cuda_graphs, default_value = "1,2,4,8,16,32,64,128,256")]
    pub cuda_graphs: CudaGraphs,
    /// CPU threads (default: one per core).
    #[arg(long, env = "NUM_THREADS")]
    pub num_threads: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, env = "PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// Require `Authorization: Bearer <key>` on every inference route (repeatable). A key
    /// may be scoped to models: `KEY:model-a,model-b` (403 on a replica serving another).
    #[arg(long = "api-key", env = "API_KEY")]
    pub api_keys: Vec<String>,
    /// A file of API keys, one `KEY[:model,...]` per line (`#` comments); with --api-key,
    /// both sets are accepted.
    #[arg(long, env = "API_KEY_FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Longest an Inference API request with `wait_for_model` waits for the model to
    /// load, in seconds (503 after).
    #[arg(long, env = "WAIT_FOR_MODEL_TIMEOUT", default_value_t = 300)]
    pub wait_for_model_timeout: u64,
    /// Responses the Inference API's cache keeps (deterministic requests only; 0 turns
    /// it off).
    #[arg(long, env = "RESPONSE_CACHE_ENTRIES", default_value_t = 1024)]
    pub response_cache_entries: usize,
    /// Memory the Inference API's response cache may take, in MiB.
    #[arg(long, env = "RESPONSE_CACHE_MIB", default_value_t = 64)]
    pub response_cache_mib: usize,
    /// Origins allowed to call from a browser (repeat or comma-separate).
    #[arg(long, env = "CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Size the KV cache by tokens instead of memory (overrides --kv-cache-memory-mib).
    #[arg(long, env = "MAX_BATCH_TOTAL_TOKENS")]
    pub max_batch_total_tokens: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM.
    #[arg(long, env = "GRACEFUL_TERMINATION_TIMEOUT", default_value_t = 90)]
    pub graceful_termination_timeout: u64,
    /// Prompts tokenized at once (on blocking threads).
    #[arg(long, env = "VALIDATION_WORKERS", default_value_t = 2)]
    pub validation_workers: usize,
    /// Accepted for TGI compatibility; has no effect: Rill's chunked-prefill
    /// scheduler adds waiting requests to every step.
    #[arg(long, env = "MAX_WAITING_TOKENS", hide = true)]
    pub max_waiting_tokens: Option<usize>,
    /// Accepted for TGI compatibility; has no effect (see --max-waiting-tokens).
    #[arg(long, env = "WAITING_SERVED_RATIO", hide = true)]
    pub waiting_served_ratio: Option<f64>,
    /// Log as JSON lines.
    #[arg(long, env = "JSON_OUTPUT")]
    pub json_output: bool,
    /// Refuse `grammar` parameters (422) instead of compiling them.
    #[arg(long, env = "DISABLE_GRAMMAR_SUPPORT")]
    pub disable_grammar_support: bool,
}

/// `--cuda-graphs`: decode buckets, ascending (empty: off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaGraphs(pub Vec<usize>);

pub fn parse_cuda_graphs(s: &str) -> Result<CudaGraphs, String> {
    rill_backend::device::cuda::parse_buckets(s).map(CudaGraphs)
}

impl CudaGraphs {
    /// The buckets a scheduler of `max_batch_size` sequences can use.
    pub fn up_to(&self, max_batch_size: usize) -> Vec<usize> {
        let last = rill_backend::device::cuda::bucket_for(&self.0, max_batch_size);
        self.0.iter().copied().filter(|&b| b <= last.unwrap_or(usize::MAX)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_buckets_stop_at_the_first_that_holds_the_largest_batch() {
        let graphs = parse_cuda_graphs("1,2,4,8,16,32").unwrap();
        assert_eq!(graphs.up_to(5), [1, 2, 4, 8]);
        assert_eq!(graphs.up_to(8), [1, 2, 4, 8]);
        assert_eq!(graphs.up_to(1000), [1, 2, 4, 8, 16, 32]);
        assert_eq!(parse_cuda_graphs("0").unwrap().up_to(8), Vec::<usize>::new());
    }
}
