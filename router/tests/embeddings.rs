//! Embedding requests through the real engine (CPU, fixture models), in process:
//! `Infer::prepare_embedding` + `Infer::embed` against transformers' final hidden states
//! and sentence-transformers' pooled vectors (`scripts/make_embedding_fixtures.py`),
//! alone, batched with generations, chunked, cancelled, and refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_backend::{Cpu, KvCacheSize, ModelDir, Runner, RunnerOptions};
use rill_router::embeddings::{Pooling, PoolingConfig, cosine_similarity};
use rill_router::engine;
use rill_router::infer::{Hidden, Infer, InferError, TokenBytes};
use rill_router::scheduler::SchedulerConfig;
use rill_router::validation::{GenerationSpec, Limits, Prompt, ValidationError};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;
const MAX_INPUT: usize = 200;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/fixtures/models").join(name)
}

/// An engine on fixture `name` whose steps run at most `max_batch_tokens` tokens.
fn serve(name: &str, max_batch_tokens: usize, max_concurrent: usize) -> Infer {
    let dir = fixture(name);
    let model = ModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    let opts = RunnerOptions { kv_cache: KvCacheSize::Bytes(8 << 20), ..Default::default() };
    let runner = Runner::load(&dir, &model.config, Cpu::with_threads(2), &opts).unwrap();
    let config = SchedulerConfig { max_batch_tokens, max_batch_size: 32, prefix_caching: true };
    let engine = engine::spawn(runner, config, model.eos_token_ids.clone());
    let limits = Limits {
        max_input_tokens: MAX_INPUT,
        max_total_tokens: 256,
        max_stop_sequences: 4,
        max_top_n_tokens: 5,
        max_best_of: 2,
        max_n: 4,
        vocab_size: model.config.vocab_size,
    };
    let tokenizer = Arc::new(model.tokenizer);
    Infer::new(engine, tokenizer, limits, None, TokenBytes::default(), max_concurrent)
}

fn text(s: &str) -> Prompt {
    Prompt::Text { text: s.into(), add_special_tokens: true }
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// The reference prompts: (text, ids).
fn prompts(name: &str) -> Vec<(String, Vec<u32>)> {
    let meta = json(&fixture(name).join("reference.json"));
    let prompts = meta["prompts"].as_array().unwrap().iter();
    prompts.map(|p| (p["text"].as_str().unwrap().to_string(), ids(&p["ids"]))).collect()
}

/// An F32 tensor of the fixture's `embeddings.safetensors` (the format is a length, a
/// JSON header naming each tensor's byte range, then the data).
fn oracle(name: &str, tensor: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(name).join("embeddings.safetensors")).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let t = &header[tensor];
    assert_eq!(t["dtype"], "F32", "{name} {tensor}");
    let [start, end] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize);
    let data = &bytes[8 + len + start..8 + len + end];
    data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

async fn embed(infer: &Infer, ids: &[u32]) -> Hidden {
    infer.embed(ids.to_vec(), Instant::now()).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Wait (bounded) until the engine holds no sequence and no KV block.
async fn wait_idle(infer: &Infer) {
    let start = Instant::now();
    while infer.engine().kv_blocks_used() != 0 || infer.engine().num_sequences() != 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "blocks still in use");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_states_and_mean_pooling_equal_transformers() {
    for name in ["llama", "llama3", "mistral", "qwen2"] {
        let infer = serve(name, 512, 8);
        let mut worst = (0f32, 0f32);
        for (i, (text, want_ids)) in prompts(name).iter().enumerate() {
            let ids = infer.prepare_embedding(self::text(text), None).unwrap();
            assert_eq!(&ids, want_ids, "{name} prompt {i}: tokenization");
            let hidden = embed(&infer, &ids).await;
            assert_eq!((hidden.tokens(), hidden.dim), (ids.len(), 64));
            let want = oracle(name, &format!("prompt{i}.hidden"));
            for t in 0..hidden.tokens() {
                let diff = max_abs_diff(hidden.row(t), &want[t * 64..(t + 1) * 64]);
                assert!(diff < TOLERANCE, "{name} prompt {i} token {t}: off by {diff}");
                worst.0 = worst.0.max(diff);
            }
            // Mean pooling as sentence-transformers computes it on a padded batch.
            let mean = PoolingConfig { pooling: Pooling::Mean, normalize: false }.pool(&hidden);
            let diff = max_abs_diff(&mean, &oracle(name, &format!("prompt{i}.mean")));
            assert!(diff < TOLERANCE, "{name} prompt {i}: mean pooling off by {diff}");
            worst.1 = worst.1.max(diff);
        }
        eprintln!("{name}: token states within {:e}, mean pooling within {:e}", worst.0, worst.1);
        wait_idle(&infer).await;
    }
    // Only qwen2 says how to pool; the others get sentence-transformers' default.
    let default = PoolingConfig::from_model_dir(&fixture("llama")).unwrap();
    assert_eq!(default, PoolingConfig { pooling: Pooling::Mean, normalize: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_vectors_equal_sentence_transformers_encode() {
    let dir = fixture("qwen2");
    let pooling = PoolingConfig::from_model_dir(&dir).unwrap();
    assert_eq!(pooling, PoolingConfig { pooling: Pooling::LastToken, normalize: true });
    let meta = json(&dir.join("embeddings.json"));
    let sentences = meta["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 3);
    let infer = serve("qwen2", 512, 8);
    let mut worst = 0f32;
    let mut vectors = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let ids = infer.prepare_embedding(text(s["text"].as_str().unwrap()), None).unwrap();
        assert_eq!(ids, self::ids(&s["ids"]), "sentence {i}: tokenization");
        let v = pooling.pool(&embed(&infer, &ids).await);
        let want = oracle("qwen2", &format!("sentence{i}.sentence_transformers"));
        let diff = max_abs_diff(&v, &want);
        assert!(diff < TOLERANCE, "sentence {i}: pooled vector off by {diff}");
        assert!(cosine_similarity(&v, &want) > 0.99999);
        worst = worst.max(diff);
        vectors.push(v);
    }
    eprintln!("qwen2: pooled vectors within {worst:e} of sentence-transformers");
    // Normalized: unit length, and a vector is most similar to itself.
    for v in &vectors {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert!((cosine_similarity(v, v) - 1.0).abs() < 1e-6);
    }
    assert!(cosine_similarity(&vectors[0], &vectors[1]) < 0.9999);
}

/// Generations to run beside embeddings: (spec, how many tokens).
fn generation(prompt: &str, tokens: u32) -> GenerationSpec {
    GenerationSpec {
        max_new_tokens: Some(tokens),
        ignore_eos: true,
        ..GenerationSpec::new(text(prompt))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_are_the_same_alone_batched_with_generations_and_chunked() {
    let (p0, p1) = {
        let p = prompts("qwen2");
        (p[0].1.clone(), p[1].1.clone())
    };
    let long: Vec<u32> = p1.iter().chain(&p0).chain(&p1).copied().collect();
    let inputs = [p0.clone(), p1.clone(), long];
    let solo = serve("qwen2", 512, 16);
    let mut alone = Vec::new();
    for ids in &inputs {
        alone.push(embed(&solo, ids).await.states);
    }
    let gen_alone =
        solo.start(solo.prepare(generation("Once upon a time", 12)).unwrap(), Instant::now());
    let gen_alone = gen_alone.unwrap().finish().await.unwrap().text;

    // Whole prompts per step, then chunks of 5 and 1 tokens (the budget is shared with
    // the generations' decodes): always the same bits.
    for budget in [512, 5, 1] {
        let infer = serve("qwen2", budget, 16);
        let generations = (0..3).map(|_| {
            let g = infer
                .start(infer.prepare(generation("Once upon a time", 12)).unwrap(), Instant::now());
            g.unwrap().finish()
        });
        let embeddings = inputs.iter().chain(&inputs).map(|ids| embed(&infer, ids));
        let (texts, hidden) = tokio::join!(
            futures::future::join_all(generations),
            futures::future::join_all(embeddings)
        );
        for (k, h) in hidden.iter().enumerate() {
            assert!(h.states == alone[k % inputs.len()], "budget {budget}: embedding {k} changed");
        }
        for t in texts {
            assert_eq!(t.unwrap().text, gen_alone, "budget {budget}: a generation changed");
        }
        wait_idle(&infer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_embedding_frees_its_blocks() {
    // One token a step: a 200-token prompt is still prefilling when it is dropped.
    let infer = Arc::new(serve("llama", 1, 8));
    let ids: Vec<u32> = (0..MAX_INPUT as u32).map(|i| 1 + i % 300).collect();
    let task = {
        let infer = Arc::clone(&infer);
        let ids = ids.clone();
        tokio::spawn(async move { infer.embed(ids, Instant::now()).await })
    };
    let start = Instant::now();
    while infer.engine().kv_blocks_used() == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the embedding never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled(), "it finished before it was dropped");
    wait_idle(&infer).await;
    // The engine goes on serving.
    let short = embed(&infer, &ids[..20]).await;
    assert_eq!(short.tokens(), 20);
    wait_idle(&infer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prompts_are_validation_errors() {
    let infer = serve("llama", 512, 1);
    let long = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let err = infer.prepare_embedding(text(&long), None).unwrap_err();
    assert!(matches!(err, ValidationError::InputLength(MAX_INPUT, n) if n > MAX_INPUT), "{err}");
    // `truncate` keeps the last tokens.
    let full = infer.tokenizer.encode(long.as_str(), true).unwrap().get_ids().to_vec();
    let kept = infer.prepare_embedding(text(&long), Some(10)).unwrap();
    assert_eq!(kept, full[full.len() - 10..]);
    let no_bos = infer
        .prepare_embedding(Prompt::Text { text: "Hi".into(), add_special_tokens: false }, None)
        .unwrap();
    assert_eq!(infer.prepare_embedding(text("Hi"), None).unwrap()[1..], no_bos[..]);
    assert_eq!(infer.prepare_embedding(text(""), None), Err(ValidationError::EmptyInput));
    let vocab = infer.limits.vocab_size as u32;
    let err = infer.prepare_embedding(Prompt::Tokens(vec![1, vocab]), None).unwrap_err();
    assert_eq!(err, ValidationError::TokenId(vocab, vocab as usize));
    assert_eq!(infer.prepare_embedding(Prompt::Tokens(vec![1, 5]), None), Ok(vec![1, 5]));

    // `embed` checks again what it is given, without troubling the engine.
    let refused = |r: Result<Hidden, InferError>| match r {
        Err(InferError::Validation(e)) => e,
        other => panic!("{other:?}"),
    };
    let now = Instant::now();
    assert_eq!(refused(infer.embed(vec![], now).await), ValidationError::EmptyInput);
    let too_long = vec![1; MAX_INPUT + 1];
    let err = refused(infer.embed(too_long, now).await);
    assert_eq!(err, ValidationError::InputLength(MAX_INPUT, MAX_INPUT + 1));
    assert_eq!(
        refused(infer.embed(vec![vocab], now).await),
        ValidationError::TokenId(vocab, vocab as usize)
    );

    // A full server answers 429: the one permit is held by a generation.
    let held = infer.start(infer.prepare(generation("Hi", 40)).unwrap(), now).unwrap();
    assert!(matches!(infer.embed(vec![1, 5], now).await, Err(InferError::Overloaded)));
    drop(held);
    assert_eq!(embed(&infer, &[1, 5]).await.tokens(), 2);
    wait_idle(&infer).await;
}
