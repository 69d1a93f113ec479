#!/usr/bin/env python3
"""Record the embedding oracle for Rill's fixture models (run after make_fixtures.py).

For each committed float32 fixture model (llama, llama3, mistral, qwen2) this writes,
beside the model, `embeddings.safetensors` + `embeddings.json`:

- `prompt{i}.hidden`: transformers' final-norm hidden states (`AutoModel(...)`
  `.last_hidden_state`, i.e. after `model.norm`) of every token of reference prompt i
  (the prompts and ids of `reference.json`), float32, `[tokens, hidden]`;
- `prompt{i}.mean`: sentence-transformers' mean pooling of those states, computed here
  as its `Pooling` module does (masked sum over a right-padded batch of all prompts,
  divided by the clamped mask sum), so the attention mask is really exercised.

For ONE model (qwen2) it also makes the directory a sentence-transformers model:
`modules.json`, `config_sentence_transformers.json`, `sentence_bert_config.json`,
`1_Pooling/config.json` (last-token pooling, like gte-Qwen2) and `2_Normalize/`, all
written by sentence-transformers' own `save`, and records
`SentenceTransformer(dir).encode(SENTENCES)` as `sentence{i}.sentence_transformers`, with
each sentence's token ids in `embeddings.json`. The weights, tokenizer and reference
files are not touched (this is not make_fixtures.py: those stay as committed).

The Transformer module is saved text-only (no "message" modality): sentence-transformers
6 would otherwise infer one from the tokenizer's chat template and embed every text
rendered through it, which models saved by earlier versions (most published embedding
models) never do. The fixture tokenizer has no pad token; sentence-transformers pads every batch, so the
loaded model's tokenizer gets `</s>` as pad token at encode time (as gte-Qwen2 ships
one). With right padding, causal attention and masked pooling, padding changes no
value: the script checks that against one-sentence batches.

Run it through `scripts/make_embedding_fixtures.sh` (same virtualenv as the other
fixtures, plus sentence-transformers). Committed; `cargo test` needs no Python.
"""

import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import AutoModel

MODELS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "integration-tests", "fixtures", "models"
)
F32_MODELS = ["llama", "llama3", "mistral", "qwen2"]
SENTENCE_TRANSFORMERS_MODEL = "qwen2"

# Short and long (past qwen2's sliding window of 6), ASCII and not.
SENTENCES = [
    "The quick brown fox",
    "A paged key value cache stores attention keys and values in blocks.",
    "Caf\u00e9 \U0001f600 r\u00e9sum\u00e9",
    "Hello, world!",
]

# The files sentence-transformers' `save` writes that make a directory one of its models.
ST_FILES = ["modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"]
ST_DIRS = ["1_Pooling", "2_Normalize"]


def load_base(directory: str):
    """The decoder without its LM head, as feature extraction loads it."""
    model = AutoModel.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    name = type(model).__name__
    assert name.endswith("Model") and "CausalLM" not in name, name
    return model.eval()


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' `Pooling(pooling_mode="mean")` on a padded batch."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)


def record_hidden(directory: str) -> dict:
    with open(os.path.join(directory, "reference.json")) as f:
        prompts = [p["ids"] for p in json.load(f)["prompts"]]
    model = load_base(directory)
    tensors = {}
    with torch.no_grad():
        solo = [model(input_ids=torch.tensor([ids])).last_hidden_state[0] for ids in prompts]
        longest = max(len(p) for p in prompts)
        input_ids = torch.tensor([p + [0] * (longest - len(p)) for p in prompts])
        mask = torch.tensor([[1] * len(p) + [0] * (longest - len(p)) for p in prompts])
        batched = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        means = mean_pool(batched, mask)
    for i, (ids, states) in enumerate(zip(prompts, solo)):
        # Right padding leaves a causal model's real rows as they are.
        torch.testing.assert_close(batched[i, : len(ids)], states, rtol=0, atol=1e-5)
        tensors[f"prompt{i}.hidden"] = states.float().contiguous()
        tensors[f"prompt{i}.mean"] = means[i].float().contiguous()
    return tensors


def make_sentence_transformer(directory: str) -> None:
    """modules.json, 1_Pooling (last token), 2_Normalize: as sentence-transformers saves them."""
    modules = [
        Transformer(
            directory,
            model_kwargs={"attn_implementation": "eager"},
            # Text only, as models saved before sentence-transformers 6 are read: with a
            # "message" modality (inferred from the chat template) it would embed each
            # text rendered through the chat template.
            modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            module_output_name="token_embeddings",
        ),
        Pooling(load_base(directory).config.hidden_size, pooling_mode="lasttoken"),
        Normalize(),
    ]
    st = SentenceTransformer(modules=modules, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        st.save(tmp)
        for name in ST_FILES:
            shutil.copy(os.path.join(tmp, name), os.path.join(directory, name))
        for name in ST_DIRS:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            shutil.copytree(os.path.join(tmp, name), os.path.join(directory, name))


def record_sentence_transformers(directory: str) -> tuple[dict, list]:
    st = SentenceTransformer(
        directory, device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    st.tokenizer.pad_token = "</s>"
    assert list(st[0].modality_config) == ["text"], st[0].modality_config
    tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    sentences = []
    for text in SENTENCES:
        ids = tok.encode(text).ids
        # The server tokenizes with `tokenizers`; what sentence-transformers feeds the model
        # must be the same ids.
        assert st.preprocess([text])["input_ids"][0].tolist() == ids, text
        sentences.append({"text": text, "ids": ids})
    pooled = st.encode(SENTENCES, convert_to_tensor=True, batch_size=len(SENTENCES))
    for i, text in enumerate(SENTENCES):
        alone = st.encode([text], convert_to_tensor=True)[0]
        torch.testing.assert_close(pooled[i], alone, rtol=0, atol=1e-5)
    tensors = {f"sentence{i}.sentence_transformers": v.float().contiguous() for i, v in enumerate(pooled)}
    return tensors, sentences


def main() -> int:
    for name in F32_MODELS:
        directory = os.path.join(MODELS, name)
        tensors = record_hidden(directory)
        meta = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "compute_dtype": "float32",
            "prompts": "those of reference.json",
            "hidden": "prompt{i}.hidden: last_hidden_state (after the final norm), [tokens, hidden]",
            "mean": "prompt{i}.mean: sentence-transformers' mean pooling of prompt{i}.hidden",
        }
        if name == SENTENCE_TRANSFORMERS_MODEL:
            make_sentence_transformer(directory)
            st_tensors, sentences = record_sentence_transformers(directory)
            tensors.update(st_tensors)
            meta["sentence_transformers"] = sentence_transformers.__version__
            meta["pooling"] = "lasttoken, then Normalize (modules.json)"
            meta["sentences"] = sentences
        save_file(tensors, os.path.join(directory, "embeddings.safetensors"))
        with open(os.path.join(directory, "embeddings.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"{name}: {len(tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
