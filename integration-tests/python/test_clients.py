"""Real clients nobody here wrote, against the real `rill` binary.

Run by scripts/python_tests.sh in two virtualenvs: one with `huggingface_hub`
(InferenceClient), one with TGI's own `text-generation` client (which pins
huggingface_hub < 1.0). Each test skips when its client is not installed in the
running environment. The server comes from conftest.py.
"""

import pytest

PROMPT = "The quick brown fox jumps over the lazy dog and then"


def test_huggingface_hub_inference_client(base_url):
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(base_url=base_url)

    out = client.text_generation(PROMPT, max_new_tokens=8, details=True)
    assert out.details.finish_reason in ("length", "eos_token")
    assert 1 <= out.details.generated_tokens <= 8
    assert "".join(t.text for t in out.details.tokens) == out.generated_text

    text = client.text_generation(PROMPT, max_new_tokens=8)
    assert text == out.generated_text

    events = list(client.text_generation(PROMPT, max_new_tokens=8, details=True, stream=True))
    assert [e.token.id for e in events] == [t.id for t in out.details.tokens]
    assert events[-1].generated_text == out.generated_text
    assert events[-1].details.finish_reason == out.details.finish_reason

    streamed = "".join(client.text_generation(PROMPT, max_new_tokens=8, stream=True))
    assert streamed == out.generated_text

    with pytest.raises(Exception) as err:
        client.text_generation(PROMPT, max_new_tokens=8, temperature=-1.0)
    assert "temperature" in str(err.value)


def test_text_generation_client(base_url):
    tg = pytest.importorskip("text_generation")
    client = tg.Client(base_url)

    out = client.generate(PROMPT, max_new_tokens=8)
    assert out.details.finish_reason in (tg.types.FinishReason.Length, tg.types.FinishReason.EndOfSequenceToken)
    assert "".join(t.text for t in out.details.tokens) == out.generated_text

    tokens = list(client.generate_stream(PROMPT, max_new_tokens=8))
    assert [t.token.id for t in tokens] == [t.id for t in out.details.tokens]
    assert tokens[-1].generated_text == out.generated_text

    with pytest.raises(tg.errors.ValidationError):
        client.generate(PROMPT, max_new_tokens=8, top_p=1.5)
