"""The official `openai` SDK and huggingface_hub's `chat_completion` against the real
`rill` binary's OpenAI routes (the server comes from conftest.py).

The tiny fixture model has random weights, so these tests check shapes and behaviour
(greedy stream = non-stream, seeds repeat, schemas hold, tool calls parse), never
what the text says. Each test skips when its client is not installed in the
running virtualenv.
"""

import json

import pytest

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 10}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def client(base_url):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")


def test_models_list_names_the_served_model(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny-llama"
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


def test_chat_stream_equals_non_stream_and_reports_usage(client):
    whole = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="tiny-llama",
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_seeded_choices_repeat_and_logprobs_have_alternatives(client):
    def three():
        r = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=8, n=3, seed=11)
        return [c.message.content for c in r.choices]

    first = three()
    assert len(first) == 3 and first == three()

    r = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in content)


def test_json_schema_output_validates(client):
    jsonschema = pytest.importorskip("jsonschema")
    schema = WEATHER["function"]["parameters"]
    for seed in range(5):
        r = client.chat.completions.create(
            model="tiny-llama",
            messages=MESSAGES,
            max_tokens=80,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}},
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_required_and_named_tool_choices_return_valid_calls(client):
    jsonschema = pytest.importorskip("jsonschema")
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        r = client.chat.completions.create(
            model="tiny-llama",
            messages=MESSAGES,
            tools=[WEATHER, TIME],
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=170,
            seed=3,
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c
        assert c.message.tool_calls, c
        for call in c.message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            assert isinstance(call.function.arguments, str)
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
            if isinstance(choice, dict):
                assert call.function.name == "get_time"

    r = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call_deltas_reassemble_in_the_sdk(client):
    jsonschema = pytest.importorskip("jsonschema")
    kwargs = dict(
        model="tiny-llama",
        messages=MESSAGES,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=170,
        seed=5,
    )
    whole = client.chat.completions.create(**kwargs)
    stream_api = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    with stream_api(**kwargs) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert calls[0].function.arguments == whole.choices[0].message.tool_calls[0].function.arguments
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert final.choices[0].finish_reason == "tool_calls"


def test_sdk_errors_carry_our_messages(client):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-llama", messages=MESSAGES, temperature=5)
    assert "temperature" in str(err.value)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert "gpt-4o" in str(err.value)
    with pytest.raises(openai.BadRequestError):
        list(client.chat.completions.create(model="tiny-llama", messages=[], stream=True))


def test_completions_with_a_list_of_prompts(client):
    r = client.completions.create(model="tiny-llama", prompt=["Hello", "Once upon a time"], max_tokens=5, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    alone = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.choices[1].text == alone.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny-llama", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == alone.choices[0].text


def test_huggingface_hub_chat_completion(base_url):
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(base_url=base_url)
    whole = client.chat_completion(MESSAGES, max_tokens=10, temperature=0)
    text = whole.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat_completion(MESSAGES, max_tokens=10, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == text
    with pytest.raises(Exception) as err:
        client.chat_completion(MESSAGES, max_tokens=10, temperature=9)
    assert "temperature" in str(err.value)

    jsonschema = pytest.importorskip("jsonschema")
    schema = WEATHER["function"]["parameters"]
    r = client.chat_completion(
        MESSAGES,
        max_tokens=80,
        seed=2,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
