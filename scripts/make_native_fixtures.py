#!/usr/bin/env python3
"""What transformers says about Rill's 16-bit fixture models when it runs them in their own dtype.

The oracle's `reference.*` files hold transformers in float32 on the upcast weights:
the exact precision reproduces them. The fast precision (bf16/f16 arithmetic, the
server's default) is held instead to transformers running the checkpoint in its dtype,
as a user of a bf16 model runs it. For each committed 16-bit checkpoint (the bf16 and
f16 variants of the `llama` fixture, and the bundled demo model) this writes
`native.json` + `native.safetensors` beside its `reference.*`: for each of the
reference's prompts, a 16-token greedy continuation in the checkpoint's dtype, and over
the whole sequence (prompt and continuation), the logits at every position twice:
`prompt{i}.native` in the checkpoint's dtype and `prompt{i}.f32` in float32 on the same
weights. Their difference is the dtype's own noise at each position, which the test
uses as its yardstick.

Run it through `scripts/make_native_fixtures.sh` (the fixtures' virtualenv). The output is
deterministic for a given torch/transformers version and committed; `cargo test` needs
no Python.
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import NEW_TOKENS, greedy, write_recorded  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "integration-tests", "fixtures")

# (checkpoint directory, directory of its reference.json, where native.* goes)
MODELS = [
    (os.path.join(FIXTURES, "models", "llama-bfloat16"), os.path.join(FIXTURES, "models", "llama-bfloat16")),
    (os.path.join(FIXTURES, "models", "llama-float16"), os.path.join(FIXTURES, "models", "llama-float16")),
    (os.path.join(ROOT, "models", "demo"), os.path.join(FIXTURES, "demo")),
]


def record(model_dir: str, out_dir: str) -> None:
    with open(os.path.join(out_dir, "reference.json")) as f:
        prompts = [p["ids"] for p in json.load(f)["prompts"]]
    with open(os.path.join(model_dir, "config.json")) as f:
        dtype = getattr(torch, json.load(f)["dtype"])
    native = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").eval()
    f32 = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tensors = {}
    records = []
    for i, ids in enumerate(prompts):
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = greedy(native, input_ids)
            seq = out[:, : len(ids) + NEW_TOKENS]
            tensors[f"prompt{i}.native"] = native(input_ids=seq).logits[0].float().contiguous()
            tensors[f"prompt{i}.f32"] = f32(input_ids=seq).logits[0].contiguous()
        records.append({"ids": ids, "greedy": out[0, len(ids):].tolist()})
    write_recorded(out_dir, "native", tensors, records, dtype)


def main() -> int:
    torch.manual_seed(0)
    for model_dir, out_dir in MODELS:
        record(model_dir, out_dir)
        print(f"wrote {os.path.relpath(out_dir, ROOT)}/native.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
