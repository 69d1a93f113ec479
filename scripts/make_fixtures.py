#!/usr/bin/env python3
"""Build Rill's oracle fixtures: tiny random checkpoints and what transformers says about them.

For each family Rill serves (Llama, Llama-3 with `llama3` rope scaling, Mistral with a
sliding window shorter than the prompt, Qwen2 with q/k/v biases and per-layer sliding
windows) this writes a Hugging Face model directory made by `save_pretrained`, a shared
byte-level BPE tokenizer trained here, and `reference.json` + `reference.safetensors`:
the prompt token ids, the float32 logits at every prompt position, and a greedy
continuation.

Two traps this avoids:
- transformers' default init leaves biases at 0 and norms at 1 and makes the logits nearly
  flat, so every parameter is re-randomized (norms near 1, biases nonzero, weights scaled
  by fan-in) and a bug in any of them moves the logits;
- transformers 5 may rebuild a model-specific tokenizer class that pre-tokenizes
  differently from `tokenizer.json`, so prompt ids come from `tokenizer.json` through the
  `tokenizers` library, exactly as the server computes them.

Run it through `scripts/make_fixtures.sh`, which makes the virtualenv. The output is
deterministic for a given torch/transformers version and committed; `cargo test` needs
no Python.
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration-tests", "fixtures")
MODELS = os.path.join(OUT, "models")
NEW_TOKENS = 16

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Rill is a streaming text generation server written in Rust for large language models.",
    "Continuous batching keeps the accelerator busy while many clients stream tokens.",
    "A paged key value cache stores attention keys and values in blocks of sixteen tokens.",
    "Once upon a time, in a land far away, there lived a small river that sang to the stones.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    '{"name": "rill", "version": 1, "tags": ["llm", "server"], "ok": true}',
    "Caf\u00e9, na\u00efve, r\u00e9sum\u00e9, \u00fcber, se\u00f1or, \u65e5\u672c\u8a9e, \U0001f600 \U0001f680.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 42.",
    "Hello, world! How are you today? I am fine, thank you. And you?",
]

PROMPTS = [
    "The quick brown fox jumps over the lazy dog and then",
    "Once upon a time, a server streamed tokens to many clients: caf\u00e9 \U0001f600",
]

SPECIAL = ["<unk>", "<s>", "</s>", "<|eot|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|eot|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_bpe(texts, vocab_size: int, special, min_frequency: int = 0) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's pre-tokenization) trained on `texts`."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=min_frequency,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = train_bpe(CORPUS * 4, vocab_size, SPECIAL)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def rerandomize(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter a distinct, non-degenerate value (see module doc)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.5 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            elif p.dim() == 2:
                p.copy_(noise * (1.5 / p.shape[1] ** 0.5))
            else:
                p.copy_(noise)


def write_tokenizer_files(directory: str, tok: Tokenizer, max_len: int) -> None:
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "add_bos_token": True,
                "model_max_length": max_len,
                "chat_template": CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": False,
            },
            f,
            indent=2,
        )


def record_reference(directory: str, model, tok: Tokenizer, compute_dtype: torch.dtype, prompts=PROMPTS) -> None:
    """Prompt logits and a greedy continuation from transformers, in float32."""
    model = model.to(compute_dtype).eval()
    tensors = {}
    records = []
    for i, text in enumerate(prompts):
        ids = tok.encode(text).ids
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits[0].float()
            out = greedy(model, input_ids)
        tensors[f"prompt{i}.logits"] = logits.contiguous()
        records.append({"text": text, "ids": ids, "greedy": out[0, len(ids):].tolist()})
    write_recorded(directory, "reference", tensors, records, compute_dtype)


def greedy(model, input_ids):
    """The prompt and its NEW_TOKENS-token greedy continuation (EOS not stopping it)."""
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
    )


def write_recorded(directory: str, stem: str, tensors, records, compute_dtype: torch.dtype) -> None:
    """`{stem}.safetensors` (the tensors) and `{stem}.json` (versions, dtype, prompts)."""
    save_file(tensors, os.path.join(directory, f"{stem}.safetensors"))
    with open(os.path.join(directory, f"{stem}.json"), "w") as f:
        json.dump(
            {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "compute_dtype": str(compute_dtype).removeprefix("torch."),
                "prompts": records,
            },
            f,
            indent=1,
        )


def build(name, cls, config, tok, seed, generation_eos=None, shard=None, variants=()):
    directory = os.path.join(MODELS, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    torch.manual_seed(seed)
    model = cls(config)
    rerandomize(model, seed)
    model.eval()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    if generation_eos is not None:
        # generation_config.json's EOS list overrides/extends config.json's.
        gen_path = os.path.join(directory, "generation_config.json")
        with open(gen_path) as f:
            gen = json.load(f)
        gen["eos_token_id"] = generation_eos
        with open(gen_path, "w") as f:
            json.dump(gen, f, indent=2)
    write_tokenizer_files(directory, tok, config.max_position_embeddings)
    record_reference(directory, model, tok, torch.float32)

    for dtype in variants:
        vdir = f"{directory}-{str(dtype).removeprefix('torch.')}"
        shutil.rmtree(vdir, ignore_errors=True)
        model.to(dtype).save_pretrained(vdir, safe_serialization=True)
        model.float()
        write_tokenizer_files(vdir, tok, config.max_position_embeddings)
        # The reference runs the *rounded* 16-bit weights upcast to float32.
        reloaded = cls.from_pretrained(vdir, dtype=torch.float32, attn_implementation="eager")
        record_reference(vdir, reloaded, tok, torch.float32)


def main() -> int:
    os.makedirs(MODELS, exist_ok=True)
    tok = train_tokenizer(400)
    vocab = tok.get_vocab_size()
    bos, eos, eot = tok.token_to_id("<s>"), tok.token_to_id("</s>"), tok.token_to_id("<|eot|>")
    common = dict(
        vocab_size=vocab,
        bos_token_id=bos,
        eos_token_id=eos,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        attn_implementation="eager",
    )

    build(
        "llama",
        LlamaForCausalLM,
        LlamaConfig(
            hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common,
        ),
        tok, seed=1, generation_eos=[eos, eot], variants=(torch.bfloat16, torch.float16),
    )
    build(
        "llama3",
        LlamaForCausalLM,
        LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **common,
        ),
        tok, seed=2, generation_eos=[eos, eot], shard="100KB",
    )
    build(
        "mistral",
        MistralForCausalLM,
        MistralConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, sliding_window=7, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common,
        ),
        tok, seed=3,
    )
    build(
        "qwen2",
        Qwen2ForCausalLM,
        Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False, use_sliding_window=True,
            sliding_window=6, max_window_layers=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common,
        ),
        tok, seed=4,
    )
    print(f"fixtures written to {os.path.normpath(MODELS)} (vocab {vocab})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
