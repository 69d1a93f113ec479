"""The peer of engine-bench: the same Llama-shaped model under Hugging Face transformers.

Builds the model from the same config.json with random weights (nothing is downloaded),
in bf16 with SDPA attention on the GPU, and measures what `engine-bench` measures, the
same way: device memory bandwidth (a device-to-device copy), decode tokens/s at batch 1
and at each `--batch` size after a `--context`-token prompt (greedy `generate` with the KV
cache; the time of a 1-token generate is subtracted, so only decode steps count), and the
time of a `--prompt`-token prefill. Best of `--reps`, after one untimed run each.

On the GPU machine (torch and transformers installed there):

    python benches/peer/transformers_bench.py --config benches/models/llama-3-8b/config.json \
        --batch 64,256 --prompt 2048 --json peer.json

It also runs on the CPU with a small config (`--device cpu`), which is how it is checked
without a GPU.
"""

import argparse
import json
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, reps, device):
    """Best wall time of `reps` calls of fn, after one untimed call."""
    best = float("inf")
    for rep in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        if rep > 0:
            best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth(device, nbytes, reps):
    """Bytes/s of a device-to-device copy (reads and writes nbytes)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / best_time(lambda: dst.copy_(src), reps, device)


def load(config_path, dtype, device):
    config = AutoConfig.from_pretrained(config_path)
    # Greedy, never stopping early: every timed generate makes exactly the tokens asked for.
    config.eos_token_id = None
    kwargs = {"attn_implementation": "sdpa"}
    # transformers 4.56 renamed torch_dtype to dtype.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    return model.eval(), config


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a config.json (random weights)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch", default="64,256", help="batched decode sizes, comma-separated")
    p.add_argument("--context", type=int, default=8, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=24, help="timed decode steps")
    p.add_argument("--prompt", type=int, default=2048, help="prefill measurement length")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--bandwidth-bytes", type=int, default=4 << 30)
    p.add_argument("--json")
    args = p.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model, config = load(args.config, dtype, device)
    vocab = config.vocab_size
    report = {
        "peer": "transformers generate",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": args.config,
        "dtype": args.dtype,
        "attn_implementation": model.config._attn_implementation,
        "context": args.context,
        "steps": args.steps,
        "reps": args.reps,
    }
    if device.type == "cuda":
        report["bandwidth_bytes_s"] = copy_bandwidth(device, args.bandwidth_bytes, 10)
        print(f"bandwidth {report['bandwidth_bytes_s'] / 1e9:.1f} GB/s")

    def generate(ids, new_tokens):
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    decodes = []
    with torch.inference_mode():
        for n in [1] + [int(b) for b in args.batch.split(",") if b]:
            ids = torch.randint(0, vocab, (n, args.context), device=device)
            first = best_time(lambda: generate(ids, 1), args.reps, device)
            total = best_time(lambda: generate(ids, args.steps + 1), args.reps, device)
            tps = n * args.steps / max(total - first, 1e-9)
            print(f"decode batch {n:>3}: {tps:9.1f} tok/s")
            decodes.append({"batch": n, "tok_s": tps})
        ids = torch.randint(0, vocab, (1, args.prompt), device=device)
        prefill = best_time(lambda: model(ids, use_cache=True), args.reps, device)
    print(f"prefill {args.prompt} tok: {prefill * 1e3:.1f} ms, {args.prompt / prefill:.0f} tok/s")
    report.update(decode=decodes, prefill_tokens=args.prompt, prefill_s=prefill,
                  prefill_tok_s=args.prompt / prefill)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
