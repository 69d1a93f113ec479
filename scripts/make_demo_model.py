#!/usr/bin/env python3
"""Train Rill's bundled demo model: a ~4M-parameter Llama that writes English and chats.

What `cargo run --release` serves when no `--model-id` is given (`models/demo`). The
model, its byte-level BPE tokenizer and its chat format are all trained here, on this
machine's CPU, from text that Debian packages carry and whose licenses allow
redistributing a model derived from it:

- the King James Bible (`bible-kjv-text`, read through `bible-kjv`'s `bible`
  program): public domain; narrative prose;
- the Python 3.11 documentation's reStructuredText sources (`python3.11-doc`), the
  tutorial, how-tos, FAQ, glossary and library/language reference, with code,
  markup and directives stripped: PSF License 2.0, which allows derived works with
  the copyright notice kept (the model card carries it);
- WordNet 3.0 (`wordnet-base`): its example sentences as plain prose, and its
  definitions turned into short chats ("What is a lantern?" - "A lantern is a light
  enclosed in a case"), under the WordNet 3.0 license (use, copy, modify and
  distribute with its notice).

Everything is seeded; with the same package versions, torch version and thread count
the weights come out the same. Run it through `scripts/make_demo_model.sh` (which
installs the Debian packages and the virtualenv). It writes `models/demo` (weights in
bf16, tokenizer, chat template, model card) and the oracle's reference for it,
`integration-tests/fixtures/demo/reference.{json,safetensors}` (transformers' f32
logits on the bf16 weights, like the other fixtures). Tests never run this.
"""

import argparse
import glob
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import record_reference, train_bpe  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL_DIR = os.path.join(ROOT, "models", "demo")
REFERENCE_DIR = os.path.join(ROOT, "integration-tests", "fixtures", "demo")
PYDOCS = "/usr/share/doc/python3.11/html/_sources"
WORDNET = "/usr/share/wordnet"
WORDS = "/usr/share/dict/american-english"

EOT, USER, ASSISTANT, SYSTEM, END = "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"
SPECIAL = [EOT, USER, ASSISTANT, SYSTEM, END]
# The chat format the model is trained on; transformers and Rill render it from here.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Greedy continuations of these are scored against the word list (and shown in the card).
QUALITY_PROMPTS = [
    "Once upon a time",
    "The little dog",
    "In the morning the king",
    "A list is",
    "The river",
    "She said that",
]
ORACLE_PROMPTS = ["Once upon a time", "The little dog ran to the river and"]


def render_chat(messages, add_generation_prompt=False):
    """CHAT_TEMPLATE, in Python (checked against transformers' rendering in main)."""
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


# ----------------------------------------------------------------------------- corpus


def kjv_documents():
    """One document per chapter, its verses joined into one paragraph."""
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True)
    chapters = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^(\w+?)(\d+):(\d+)\s+(.*)$", line)
        if m:
            chapters.setdefault((m.group(1), m.group(2)), []).append(m.group(4).strip())
        elif line.strip() and chapters:
            next(reversed(chapters.values()))[-1] += " " + line.strip()
    return [" ".join(verses) for verses in chapters.values()]


ROLE = re.compile(r":[\w:+-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
LITERAL = re.compile(r"``([^`]+)``")
EMPH = re.compile(r"\*\*?([^*]+)\*\*?")


def rst_prose(text):
    """The paragraphs of a reStructuredText file that are prose: no directives, code
    blocks, tables or titles; roles and literals reduced to their text."""
    paragraphs, para, skip_indent = [], [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if not stripped:
            if para:
                paragraphs.append(" ".join(para))
                para = []
            continue
        if stripped.startswith(".."):
            skip_indent = indent
            continue
        if re.fullmatch(r"[=\-~^*#+\"'`.:_]{3,}", stripped) or stripped.startswith(("|", "+-", ">>>", "...")):
            para = []  # a title (the line before it) or table row
            continue
        if indent > 0 and not para:
            continue  # block quotes and code examples
        if stripped.endswith("::"):
            stripped = stripped[:-1]
            skip_indent = indent
        para.append(stripped)
    if para:
        paragraphs.append(" ".join(para))
    keep = []
    for p in paragraphs:
        p = LITERAL.sub(r"\1", LINK.sub(r"\1", ROLE.sub(r"\1", p)))
        p = EMPH.sub(r"\1", p).replace("\\", "")
        words = p.split()
        alpha = sum(w.strip(".,;:()'\"!?").isalpha() for w in words)
        if len(words) >= 8 and alpha >= 0.8 * len(words) and not p.startswith(("*", "-", "#")):
            keep.append(p)
    return "\n".join(keep)


def pydocs_documents():
    docs = []
    for part in ["tutorial", "howto", "faq", "library", "reference", "glossary.rst.txt"]:
        path = os.path.join(PYDOCS, part)
        files = [path] if path.endswith(".txt") else sorted(glob.glob(f"{path}/**/*.rst.txt", recursive=True))
        for f in files:
            with open(f, encoding="utf-8") as fh:
                prose = rst_prose(fh.read())
            if len(prose) > 200:
                docs.append(prose)
    return docs


def wordnet_synsets():
    """{(pos, offset): (pos, [lemmas], definition, [examples])} for every WordNet synset."""
    out = {}
    for pos in ["noun", "verb", "adj"]:
        with open(os.path.join(WORDNET, f"data.{pos}"), encoding="latin-1") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                n = int(fields[3], 16)
                lemmas = [re.sub(r"\(.*\)$", "", fields[4 + 2 * k]).replace("_", " ") for k in range(n)]
                examples = re.findall(r'"([^"]+)"', gloss)
                definition = gloss.split(";")[0].strip().strip('"').strip()
                out[(pos, fields[0])] = (pos, lemmas, definition, examples)
    return out


def article(word):
    return "an" if word[0].lower() in "aeiou" else "a"


GREETINGS = [
    (["Hello!", "Hi!", "Hello.", "Hi there.", "Good morning!", "Hey."],
     ["Hello! I am a small demo model. Ask me what a word means.",
      "Hi! I am Rill's demo model. I can tell you what a word means.",
      "Hello. I am a tiny language model. Ask me about a word."]),
    (["Who are you?", "What are you?", "What is your name?"],
     ["I am a small language model that ships with Rill, trained on a few books and documents.",
      "I am Rill's demo model: a tiny model trained on a CPU in well under an hour."]),
    (["What can you do?", "How can you help me?", "What do you know?"],
     ["I can continue a piece of text and tell you what common English words mean.",
      "Ask me what a word means, or give me the start of a sentence and I will go on with it."]),
    (["Thank you!", "Thanks.", "Thank you very much."],
     ["You are welcome!", "Glad to help.", "You are welcome. Ask me another word."]),
    (["Goodbye!", "Bye.", "See you later."], ["Goodbye!", "Bye! Come back any time."]),
]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a friendly assistant that explains words.",
                  "Answer in one sentence."]


def definition_turn(rng, pos, word, definition, examples):
    """One (question, answer) about `word`."""
    if pos == "noun":
        forms = [
            (f"What is {article(word)} {word}?", f"{article(word).capitalize()} {word} is {definition}."),
            (f"What does {word} mean?", f"The word {word} means {definition}."),
            (f"Define {word}.", f"{word.capitalize()}: {definition}."),
        ]
    elif pos == "verb":
        forms = [
            (f"What does it mean to {word}?", f"To {word} is to {definition}."),
            (f"What does {word} mean?", f"To {word} means to {definition}."),
        ]
    else:
        forms = [
            (f"What does {word} mean?", f"{word.capitalize()} means {definition}."),
            (f"What is the meaning of {word}?", f"The word {word} means {definition}."),
        ]
    q, a = rng.choice(forms)
    if examples and rng.random() < 0.5:
        a += f' For example: "{examples[0]}."'
    return q, a


def chat_documents(rng, senses):
    """Conversations of one to three turns: definitions of common words and small talk."""
    docs = []
    for _ in range(len(senses)):
        messages = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for turn in range(rng.choice([1, 1, 2, 3])):
            if rng.random() < 0.12:
                questions, answers = rng.choice(GREETINGS)
                q, a = rng.choice(questions), rng.choice(answers)
            else:
                q, a = definition_turn(rng, *rng.choice(senses))
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        docs.append(render_chat(messages))
    return docs


def first_senses(synsets, common):
    """(pos, word, definition, examples) of the most frequent sense of each common word
    (WordNet's index files list a word's synsets most frequent first)."""
    out = []
    for pos in ["noun", "verb", "adj"]:
        with open(os.path.join(WORDNET, f"index.{pos}"), encoding="latin-1") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue
                fields = line.split()
                word, n_synsets = fields[0], int(fields[2])
                if word not in common:
                    continue
                _, _, definition, examples = synsets[(pos, fields[-n_synsets])]
                if len(definition.split()) <= 24:
                    out.append((pos, word, definition, examples))
    return out


def corpus(rng):
    kjv, pydocs = kjv_documents(), pydocs_documents()
    synsets = wordnet_synsets()
    # WordNet's example sentences, in shuffled groups of twenty, as plain prose.
    sentences = [e[0].upper() + e[1:] + "." for _, _, _, ex in synsets.values() for e in ex if len(e.split()) >= 4]
    rng.shuffle(sentences)
    examples = [" ".join(sentences[i : i + 20]) for i in range(0, len(sentences), 20)]
    counts = {}
    for doc in kjv + pydocs + examples:
        for w in re.findall(r"[a-z]+", doc.lower()):
            counts[w] = counts.get(w, 0) + 1
    common = {w for w, c in counts.items() if c >= 20}
    senses = first_senses(synsets, common)
    chats = chat_documents(rng, senses + senses)
    sources = {"kjv": kjv, "pydocs": pydocs, "wordnet_examples": examples, "chat": chats}
    return sources


def split(sources, held_out):
    """Each document to train or held-out, by a hash of its text (stable across runs)."""
    train, test = [], []
    for docs in sources.values():
        for d in docs:
            h = int(hashlib.sha256(d.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            (test if h < held_out else train).append(d)
    return train, test


# -------------------------------------------------------------------------- tokenizer


def encode_stream(tok, docs):
    eot = tok.token_to_id(EOT)
    ids = []
    for enc in tok.encode_batch(docs):
        ids += enc.ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- training


def model_config(vocab, args):
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, data, args):
    gen = torch.Generator().manual_seed(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    model.train()
    start = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        x = torch.stack([data[s : s + args.seq + 1] for s in starts.tolist()])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        loss = model(input_ids=x, labels=x).loss  # transformers shifts the labels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - start
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr_at(step, args):.2e}  {el:7.0f} s", flush=True)
    return time.time() - start


@torch.no_grad()
def perplexity(model, data, seq):
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(data) - 1, seq):
        x = data[s : s + seq + 1].unsqueeze(0)
        if x.shape[1] < 2:
            break
        loss = model(input_ids=x, labels=x).loss
        n = x.shape[1] - 1
        total += loss.item() * n
        count += n
    return math.exp(total / count)


def load_words():
    with open(WORDS, encoding="utf-8") as fh:
        return {w.strip().lower() for w in fh if w.strip()}


def word_rate(texts, words):
    """The share of the words in `texts` that are in the word list (the test's rule)."""
    found = [w.lower() for t in texts for w in re.findall(r"[A-Za-z]+(?:'[a-z]+)?", t)]
    return sum(w in words or w.split("'")[0] in words for w in found) / max(1, len(found)), len(found)


@torch.no_grad()
def greedy(model, tok, prompt, new_tokens):
    ids = torch.tensor([tok.encode(prompt).ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=tok.token_to_id(EOT),
                         eos_token_id=[tok.token_to_id(EOT), tok.token_to_id(END)])
    return tok.decode(out[0, ids.shape[1]:].tolist())


# ----------------------------------------------------------------------------- export


def write_model_dir(model, tok, args, stats):
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    os.makedirs(MODEL_DIR)
    eot, end = tok.token_to_id(EOT), tok.token_to_id(END)
    model.config.bos_token_id = None
    model.config.eos_token_id = eot
    model.generation_config.bos_token_id = None
    model.generation_config.eos_token_id = [end, eot]
    model.generation_config.pad_token_id = eot
    model.to(torch.bfloat16).save_pretrained(MODEL_DIR, safe_serialization=True)
    model.float()
    tok.save(os.path.join(MODEL_DIR, "tokenizer.json"))
    with open(os.path.join(MODEL_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "bos_token": None,
                "eos_token": END,
                "pad_token": EOT,
                "unk_token": None,
                "add_bos_token": False,
                "model_max_length": args.context,
                "chat_template": CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": False,
                "added_tokens_decoder": {
                    str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                              "rstrip": False, "normalized": False, "single_word": False}
                    for t in SPECIAL
                },
            },
            f,
            indent=2,
        )
    with open(os.path.join(MODEL_DIR, "training.json"), "w") as f:
        json.dump(stats, f, indent=1)


CARD = """---
license: other
license_name: derived-from-public-domain-psf-2.0-and-wordnet-3.0
language: [en]
pipeline_tag: text-generation
library_name: transformers
---

# Rill demo model

A {params_m:.1f}M-parameter Llama-architecture model that [Rill](../../README.md)
serves when it is started without `--model-id`. It was trained from scratch on a CPU
so that a newcomer's first request returns English, not noise. It is a toy: it writes
plausible-looking sentences and answers "what does this word mean" in its chat
format, and knows almost nothing else.

## Model

| | |
|---|---|
| architecture | `LlamaForCausalLM`, {layers} layers, hidden {hidden}, MLP {intermediate}, {heads} heads ({kv_heads} KV heads), RoPE θ 10 000, tied embeddings |
| parameters | {params:,} |
| context | {context} tokens (trained on windows of {seq}) |
| tokenizer | byte-level BPE, {vocab} tokens, trained on the same text |
| weights | `model.safetensors`, bfloat16 ({size_mb:.1f} MB) |
| chat format | `<|user|>\\n…<|end|>\\n<|assistant|>\\n…<|end|>\\n` (`<|system|>` too), in `tokenizer_config.json`'s `chat_template`; `<|end|>` ends a turn, `<|endoftext|>` a document |

## Data

All of it from Debian packages, so the training needs no download beyond them:

| source | Debian package | license | documents | bytes |
|---|---|---|---|---|
| King James Bible, one document per chapter | `bible-kjv-text` | public domain | {kjv_docs} | {kjv_bytes:,} |
| Python 3.11 documentation: tutorial, how-tos, FAQ, glossary, library and language reference, as prose (code, markup and tables stripped) | `python3.11-doc` | PSF License 2.0 (Copyright © 2001-2023 Python Software Foundation; all rights reserved) | {py_docs} | {py_bytes:,} |
| WordNet 3.0 example sentences, in groups of twenty | `wordnet-base` | WordNet 3.0 license (Copyright 2006 by Princeton University; all rights reserved; use, copy, modify and distribute with this notice) | {wn_docs} | {wn_bytes:,} |
| chats made from WordNet: the most frequent sense of common words as "What is a …?" / "What does … mean?" answers, plus small talk | `wordnet-base` | as above | {chat_docs} | {chat_bytes:,} |

Why these: each license lets a derived model be redistributed with its notice (the
Bible text is public domain), and together they mix narrative prose, expository
prose and short definitions. A {held_out:.0%} slice of the documents (chosen by a hash
of their text) is held out.

## Training

`scripts/make_demo_model.sh` (installs the Debian packages and a PyTorch virtualenv,
then runs `scripts/make_demo_model.py`): AdamW (β 0.9/0.95, weight decay 0.1), peak
learning rate {lr}, {warmup} warm-up steps then cosine decay to a tenth, {steps} steps
of {batch} windows of {seq_1} tokens ({tokens_seen:,} tokens, {epochs:.1f} passes over the
{train_tokens:,} training tokens), seed {seed}, float32, {threads} threads. It took
{minutes:.0f} minutes on {cpu} (torch {torch}, transformers {transformers}). With the
same package versions, torch and thread count it gives the same weights.

## Evaluation

- Held-out perplexity: **{ppl:.1f}** (per token, over {held_out_tokens:,} held-out tokens).
- Greedy continuations of the prompts below (48 new tokens): **{rate:.0%}** of their
  {n_words} words are in SCOWL's American English word list (Debian's `wamerican`;
  a word counts with its possessive `'s` stripped). `integration-tests/python/test_demo_model.py`
  checks the same on Rill's output (at least 80%).

{samples}

## What it can and cannot do

It continues prose in the voice of its sources — biblical narrative, Python
documentation — and answers "What is a …?" or "What does … mean?" with something
shaped like a dictionary entry, often for the right word and sometimes with the
right meaning. Its sentences drift; it does not know facts, follow instructions,
count, write code that runs, or remember more than a few sentences. Never use it for
anything but seeing that a server works.
"""


def write_card(stats):
    a = stats["args"]
    c = stats["corpus"]
    samples = "\n".join(
        f"- `{q}` → {t.strip()!r}" for q, t in {**stats["greedy_continuations"], **{
            f"(chat) {q}": t for q, t in stats["greedy_chats"].items()}}.items()
    )
    size = os.path.getsize(os.path.join(MODEL_DIR, "model.safetensors"))
    rate, n_words = word_rate(stats["greedy_continuations"].values(), load_words())
    text = CARD.format(
        params_m=stats["parameters"] / 1e6, params=stats["parameters"], size_mb=size / 1e6,
        layers=a["layers"], hidden=a["hidden"], intermediate=a["intermediate"], heads=a["heads"],
        kv_heads=a["kv_heads"], context=a["context"], seq=a["seq"], seq_1=a["seq"] + 1, vocab=a["vocab"],
        kjv_docs=c["kjv"]["documents"], kjv_bytes=c["kjv"]["bytes"],
        py_docs=c["pydocs"]["documents"], py_bytes=c["pydocs"]["bytes"],
        wn_docs=c["wordnet_examples"]["documents"], wn_bytes=c["wordnet_examples"]["bytes"],
        chat_docs=c["chat"]["documents"], chat_bytes=c["chat"]["bytes"],
        held_out=a["held_out"], lr=a["lr"], warmup=a["warmup"], steps=a["steps"], batch=a["batch"],
        tokens_seen=stats["tokens_seen"], epochs=stats["tokens_seen"] / stats["train_tokens"],
        train_tokens=stats["train_tokens"], seed=stats["seed"], threads=a["threads"],
        minutes=stats["train_seconds"] / 60, cpu=stats["cpu"], torch=stats["torch"],
        transformers=stats["transformers"], ppl=stats["held_out_perplexity"],
        held_out_tokens=stats["held_out_tokens"], rate=rate, n_words=n_words, samples=samples,
    )
    with open(os.path.join(MODEL_DIR, "README.md"), "w") as f:
        f.write(text)


def write_reference(tok):
    """The oracle: transformers' f32 logits on the saved (bf16-rounded) weights."""
    os.makedirs(REFERENCE_DIR, exist_ok=True)
    reloaded = LlamaForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
    record_reference(REFERENCE_DIR, reloaded, tok, torch.float32, prompts=ORACLE_PROMPTS)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--held-out", type=float, default=0.02)
    p.add_argument("--time-steps", type=int, default=0, help="time this many steps, print, and stop")
    p.add_argument("--card-only", action="store_true", help="rewrite README.md from training.json")
    p.add_argument("--reference-only", action="store_true", help="rewrite the oracle reference from models/demo")
    args = p.parse_args()
    if args.card_only:
        with open(os.path.join(MODEL_DIR, "training.json")) as f:
            write_card(json.load(f))
        return 0
    if args.reference_only:
        write_reference(Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json")))
        return 0

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    t0 = time.time()
    sources = corpus(rng)
    train_docs, test_docs = split(sources, args.held_out)
    rng.shuffle(train_docs)
    sizes = {k: {"documents": len(v), "bytes": sum(len(d.encode()) for d in v)} for k, v in sources.items()}
    print("corpus:", json.dumps(sizes), flush=True)
    tok = train_bpe(train_docs, args.vocab, SPECIAL, min_frequency=2)
    train_ids, test_ids = encode_stream(tok, train_docs), encode_stream(tok, test_docs)
    print(f"tokens: train {len(train_ids)}, held-out {len(test_ids)} ({time.time() - t0:.0f} s)", flush=True)

    config = model_config(tok.get_vocab_size(), args)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params}", flush=True)
    if args.time_steps:
        args.steps = args.time_steps
        s = train(model, train_ids, args)
        print(f"{s / args.steps:.2f} s/step")
        return 0
    seconds = train(model, train_ids, args)
    model.eval()
    ppl = perplexity(model, test_ids, args.seq)
    words = load_words()
    continuations = {q: greedy(model, tok, q, 48) for q in QUALITY_PROMPTS}
    rate, n_words = word_rate(continuations.values(), words)
    chats = {}
    for q in ["What is a dog?", "What does it mean to swim?", "Hello!"]:
        prompt = render_chat([{"role": "user", "content": q}], add_generation_prompt=True)
        chats[q] = greedy(model, tok, prompt, 48)
    for q, c in {**continuations, **chats}.items():
        print(f"{q!r} -> {c!r}")
    print(f"held-out perplexity {ppl:.2f}; dictionary words {rate:.1%} of {n_words}")
    stats = {
        "seed": args.seed,
        "args": vars(args),
        "parameters": params,
        "corpus": sizes,
        "train_tokens": len(train_ids),
        "held_out_tokens": len(test_ids),
        "tokens_seen": args.steps * args.batch * (args.seq + 1),
        "train_seconds": round(seconds),
        "cpu": subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                              text=True).stdout.strip(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "held_out_perplexity": round(ppl, 2),
        "dictionary_word_rate": round(rate, 4),
        "greedy_continuations": continuations,
        "greedy_chats": chats,
    }
    write_model_dir(model, tok, args, stats)
    write_card(stats)

    # transformers must render the template exactly as render_chat does.
    hf_tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render_chat(msgs, True)

    write_reference(tok)
    print(f"wrote {MODEL_DIR} and {REFERENCE_DIR} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
