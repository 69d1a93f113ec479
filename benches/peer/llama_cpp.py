"""Helpers of the llama.cpp peer harness (`benches/peer/llama_cpp.sh` runs them).

    fetch VERSION DIR         the llama-cpp-python sdist from PyPI (sha256 checked), unpacked in DIR
    checkpoint CONFIG OUT     a bf16 safetensors checkpoint of CONFIG's shape, random weights
    convert LLAMA_CPP CKPT GGUF   llama.cpp's own converter, bf16 out
    summary WORK OUT.json     every figure of the run, with its ratio, printed and written

Nothing here is on the test command's path: it is the benchmark's plumbing.
"""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path


def fetch(version, dest):
    """The sdist of llama-cpp-python VERSION from the package index, unpacked into dest.

    Read through the index's JSON API rather than `pip download`: pip would build the
    package's metadata first, which configures the whole C++ tree with CMake.
    """
    dest = Path(dest)
    tree = dest / f"llama_cpp_python-{version}"
    if (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        return
    index = os.environ.get("PYPI_JSON", "https://pypi.org/pypi")
    meta_url = f"{index}/llama-cpp-python/json"
    with urllib.request.urlopen(meta_url) as r:
        meta = json.load(r)
    (sdist,) = [u for u in meta["releases"][version] if u["packagetype"] == "sdist"]
    url = urllib.parse.urljoin(meta_url, sdist["url"])
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / sdist["filename"]
    print(f"fetching {sdist['filename']} ({sdist['size'] / 1e6:.0f} MB)", flush=True)
    with urllib.request.urlopen(url) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != sdist["digests"]["sha256"]:
        sys.exit(f"{archive}: sha256 {digest}, the index says {sdist['digests']['sha256']}")
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")


def checkpoint(config, out):
    """A safetensors checkpoint of the config's shape in bf16, initialised the way
    transformers initialises a new model (normal, std = initializer_range), with the
    config's tokenizer files beside it. Both engines load these same weights."""
    out, src = Path(out), Path(config).parent
    if not (out / "model.safetensors").exists():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        cfg = AutoConfig.from_pretrained(src)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
        n = sum(p.numel() for p in model.parameters())
        print(f"wrote {out} ({n / 1e9:.2f}B parameters)")
    shutil.copy(src / "tokenizer_config.json", out / "tokenizer_config.json")
    # The repository's tokenizer has 400 tokens, the config's vocabulary 32,000: random
    # weights pick any of them, and an id the tokenizer does not know has no text, so a
    # stream would carry nothing until a known one came. Every id gets a word of its own
    # (never produced by encoding: no merge makes it), as in a real checkpoint, where
    # every id the model can sample decodes to something.
    vocab_size = json.loads((src / "config.json").read_text())["vocab_size"]
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    for i in range(vocab_size):
        if i not in taken:
            vocab[f"\u0120w{i}"] = i  # byte-level "Ġ" is a space: " w1234"
    text = json.dumps(tok, ensure_ascii=False)
    path = out / "tokenizer.json"
    if not path.exists() or path.read_text() != text:  # unchanged: the GGUF stays current
        path.write_text(text)


def convert(llama_cpp, ckpt, gguf):
    """Run llama.cpp's convert_hf_to_gguf.py on the checkpoint, bf16 out.

    The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a test
    string, and knows only published models' tokenizers. The benchmark's tokenizer is the
    repository's small byte-level BPE whose pre-tokenizer is GPT-2's (ByteLevel with
    GPT-2's regex, as its tokenizer.json says), so the converter is told "gpt-2" instead
    of refusing: prompts split the same way in both engines.
    """
    tokenizer = Path(ckpt) / "tokenizer.json"
    if Path(gguf).exists() and Path(gguf).stat().st_mtime > tokenizer.stat().st_mtime:
        return
    llama_cpp = Path(llama_cpp)
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    sys.argv = ["convert_hf_to_gguf.py", str(ckpt), "--outtype", "bf16", "--outfile", str(gguf)]
    import convert_hf_to_gguf
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    convert_hf_to_gguf.main()


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def summary(work, out):
    """Every figure of the run beside its llama.cpp counterpart, with the ratio."""
    work = Path(work)
    rows = []
    eb = lb = rill_decode = None
    if (work / "engine-bench.json").exists():  # the engine stage ran
        eb = json.loads((work / "engine-bench.json").read_text())
        lb = json.loads((work / "llama-bench.json").read_text())
        (res,) = eb["results"]
        rill_decode = next(d["tok_s"] for d in res["decode"] if d["batch"] == 1)
        # llama-bench: one record per test; n_gen > 0 is decode, n_prompt > 0 prefill.
        peer_decode = next(r["avg_ts"] for r in lb if r["n_gen"] > 0 and r["n_prompt"] == 0)
        peer_prefill = next(r["avg_ts"] for r in lb if r["n_prompt"] > 0 and r["n_gen"] == 0)
        rows += [
            ("decode batch 1 (tok/s)", rill_decode, peer_decode),
            (f"prefill {res['prefill_tokens']} (tok/s)", res["prefill_tok_s"], peer_prefill),
        ]
        exact_path = work / "engine-bench-exact.json"
        if exact_path.exists():
            (exact,) = json.loads(exact_path.read_text())["results"]
            rows += [
                ("exact precision: decode batch 1 (tok/s)",
                 next(d["tok_s"] for d in exact["decode"] if d["batch"] == 1), peer_decode),
                (f"exact precision: prefill {exact['prefill_tokens']} (tok/s)",
                 exact["prefill_tok_s"], peer_prefill),
            ]
    servers = []
    for c in sorted(int(p.stem.split("-c")[-1]) for p in work.glob("server-rill-c*.json")):
        r = json.loads((work / f"server-rill-c{c}.json").read_text())
        p = json.loads((work / f"server-llama-c{c}.json").read_text())
        rows.append((f"server {c} clients: generated tok/s", r["generated_tokens_per_s"],
                     p["generated_tokens_per_s"]))
        rows.append((f"server {c} clients: TTFT p50 (ms, lower is better)", r["ttft"]["p50_ms"],
                     p["ttft"]["p50_ms"]))
        rows.append((f"server {c} clients: ITL p50 (ms, lower is better)", r["itl"]["p50_ms"],
                     p["itl"]["p50_ms"]))
        servers.append({"clients": c, "rill": r, "llama_cpp": p})
    one = next((s["rill"] for s in servers if s["clients"] == 1), None)
    # One client's decode rate: tokens after the first over the time after the first.
    one_decode = 1e3 / one["itl"]["p50_ms"] if one else None
    if not rows:
        sys.exit(f"no figures in {work}: no stage ran")

    width = max(len(r[0]) for r in rows)
    print(f"\nCPU: {cpu_model()}" + (f"   threads: {eb['threads']}   {eb['machine']}" if eb else ""))
    print(f"{'':<{width}}  {'Rill':>9}  {'llama.cpp':>9}  ratio")
    for name, a, b in rows:
        lower_better = "lower is better" in name
        ratio = (b / a) if lower_better else (a / b)
        print(f"{name:<{width}}  {a:9.1f}  {b:9.1f}  {ratio:5.2f}x")
    if one_decode and rill_decode:
        print(f"Rill 1-client decode (1/ITL p50) {one_decode:.1f} tok/s = "
              f"{one_decode / rill_decode:.2f}x engine-bench batch 1")
    report = {
        "cpu": cpu_model(),
        "machine": eb and eb["machine"],
        "bandwidth_bytes_s": eb and eb["bandwidth_bytes_s"],
        "fma_peak_flop_s": eb and eb["fma_peak_flop_s"],
        "llama_cpp_python_version": os.environ.get("LLAMA_CPP_PYTHON_VERSION"),
        "rill_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                      text=True).stdout.strip(),
        "figures": [
            {"measure": n, "rill": a, "llama_cpp": b,
             "ratio": (b / a) if "lower is better" in n else (a / b)}
            for n, a, b in rows
        ],
        "server_one_client_decode_vs_engine_bench": (
            one_decode / rill_decode if one_decode and rill_decode else None),
        "engine_bench": eb,
        "engine_bench_exact": (json.loads((work / "engine-bench-exact.json").read_text())
                               if (work / "engine-bench-exact.json").exists() else None),
        "llama_bench": lb,
        "servers": servers,
    }
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    commands = {"fetch": fetch, "checkpoint": checkpoint, "convert": convert, "summary": summary}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
