"""The Hugging Face Inference API routes as their users call them: `requests` exactly
as the API documentation writes it (`query(payload)` with a bearer token), and
huggingface_hub's InferenceClient pointed at the server's model URL. The tiny fixture model
has random weights, so the checks are shapes, defaults and repeatability, never what
the text says. Each test skips when its client is not installed.
"""

import math

import pytest

PROMPT = "The answer to the universe is"


def test_requests_as_the_documentation_shows(keyed_server):
    requests = pytest.importorskip("requests")
    url, key = keyed_server
    API_URL = f"{url}/models/llama"
    headers = {"Authorization": f"Bearer {key}"}

    def query(payload, api_url=API_URL):
        response = requests.post(api_url, headers=headers, json=payload)
        return response.json()

    # text-generation: the full text by default, greedy at temperature 0.
    payload = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "temperature": 0.0}}
    data = query(payload)
    assert isinstance(data, list) and data[0]["generated_text"].startswith(PROMPT), data
    # Deterministic, so the second answer comes from the cache, byte for byte.
    first = requests.post(API_URL, headers=headers, json={**payload, "options": {"use_cache": False}})
    again = requests.post(API_URL, headers=headers, json=payload)
    assert first.headers["x-cache"] == "MISS" and again.headers["x-cache"] == "HIT"
    assert again.content == first.content
    # A list of inputs answers a list of lists.
    many = query({"inputs": [PROMPT, "Hello"], "parameters": {"max_new_tokens": 4, "temperature": 0.0}})
    assert len(many) == 2 and all(len(answers) == 1 for answers in many)

    # conversational, through the model's chat template.
    data = query(
        {
            "inputs": {
                "past_user_inputs": ["Which movie is the best ?"],
                "generated_responses": ["It is Die Hard for sure."],
                "text": "Can you explain why ?",
            },
            "parameters": {"max_new_tokens": 6, "temperature": 0.0},
        },
        f"{API_URL}/conversational",
    )
    assert data["conversation"]["past_user_inputs"][-1] == "Can you explain why ?"
    assert data["conversation"]["generated_responses"][-1] == data["generated_text"]

    # sentence-similarity and feature-extraction.
    data = query(
        {
            "inputs": {
                "source_sentence": "That is a happy person",
                "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
            }
        },
        f"{API_URL}/sentence-similarity",
    )
    assert len(data) == 3 and all(-1.0 <= x <= 1.0 for x in data), data
    data = query({"inputs": "Today is a sunny day"}, f"{url}/pipeline/feature-extraction")
    assert len(data) == 1 and len(data[0]) > 1 and all(math.isfinite(x) for x in data[0][0])

    # The API's errors: no key, an unserved task, an unknown model.
    r = requests.post(API_URL, json=payload)
    assert r.status_code == 401 and "error" in r.json()
    r = requests.post(f"{API_URL}/summarization", headers=headers, json={"inputs": "x"})
    assert r.status_code == 400 and "summarization" in r.json()["error"]
    r = requests.post(f"{url}/models/someone/else", headers=headers, json={"inputs": "x"})
    assert r.status_code == 404 and r.json() == {"error": "Model someone/else does not exist"}


def test_inference_client_on_the_model_url(base_url):
    # huggingface_hub 1.x, as users install it today (its feature_extraction needs
    # numpy); the TGI client's venv pins 0.x, which this test is not about.
    hub = pytest.importorskip("huggingface_hub", minversion="1.0")
    pytest.importorskip("numpy")
    client = hub.InferenceClient(model=f"{base_url}/models/llama")

    out = client.text_generation(PROMPT, max_new_tokens=8, temperature=0.0, details=True)
    assert out.generated_text.startswith(PROMPT), "the Inference API returns the full text"
    assert 1 <= out.details.generated_tokens <= 8
    short = client.text_generation(PROMPT, max_new_tokens=8, temperature=0.0, return_full_text=False)
    assert PROMPT + short == out.generated_text
    streamed = "".join(client.text_generation(PROMPT, max_new_tokens=8, temperature=0.0, stream=True))
    assert streamed == short

    vectors = client.feature_extraction("Today is a sunny day", model=f"{base_url}/models/llama/feature-extraction")
    assert vectors.ndim == 3 and vectors.shape[0] == 1 and vectors.shape[1] > 1
    again = hub.InferenceClient(model=f"{base_url}/pipeline/feature-extraction").feature_extraction(
        "Today is a sunny day"
    )
    assert (again == vectors).all()
    scores = client.sentence_similarity(
        "That is a happy person",
        other_sentences=["That is a happy dog", "That is a happy person"],
        model=f"{base_url}/models/llama/sentence-similarity",
    )
    assert len(scores) == 2 and abs(scores[1] - 1.0) < 1e-5, scores

    with pytest.raises(Exception) as err:
        client.text_generation(PROMPT, max_new_tokens=8, temperature=200.0)
    assert "temperature" in str(err.value)
