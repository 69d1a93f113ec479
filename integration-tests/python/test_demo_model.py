"""The bundled demo model (`models/demo`, what `rill` serves with no `--model-id`)
writes English: its greedy continuations of simple prompts, through the real server,
are mostly words of a standard English word list (SCOWL's, from Debian's `wamerican`,
which scripts/python_tests.sh installs), and it answers in its chat format through
the official `openai` SDK. Each test skips when its client is not installed.
"""

import re

import pytest

WORDS = "/usr/share/dict/american-english"
# The prompts scripts/make_demo_model.py scores in the model card.
PROMPTS = ["Once upon a time", "The little dog", "In the morning the king", "A list is", "The river", "She said that"]


def word_rate(texts):
    """The share of the words in `texts` in the word list (the model card's rule)."""
    with open(WORDS, encoding="utf-8") as fh:
        words = {w.strip().lower() for w in fh if w.strip()}
    found = [w.lower() for t in texts for w in re.findall(r"[A-Za-z]+(?:'[a-z]+)?", t)]
    return sum(w in words or w.split("'")[0] in words for w in found) / len(found), len(found)


def test_greedy_continuations_are_mostly_dictionary_words(demo_url):
    requests = pytest.importorskip("requests")
    texts = []
    for prompt in PROMPTS:
        r = requests.post(f"{demo_url}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 48}})
        r.raise_for_status()
        texts.append(r.json()["generated_text"])
    rate, n = word_rate(texts)
    assert n >= 6 * 16, texts
    assert rate >= 0.8, (rate, texts)
    # And the words are the text: letters, not byte soup between short fragments (the
    # random fixture model scores 61% words by the rule above, but fails this).
    visible = "".join("".join(texts).split())
    assert "\ufffd" not in visible and sum(c.isascii() and c.isalpha() for c in visible) >= 0.85 * len(visible), texts


def test_the_demo_model_chats_through_the_openai_sdk(demo_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{demo_url}/v1", api_key="-")
    r = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "What is a house?"}], max_tokens=64, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    rate, n = word_rate([choice.message.content])
    assert n >= 4 and rate >= 0.8, choice.message.content
    # Streaming says the same.
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "What is a house?"}], max_tokens=64, temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == choice.message.content
