"""Triton's own HTTP client (`tritonclient[http]`) against the Open Inference Protocol
routes, with its defaults (binary tensors both ways) and with JSON tensors; the
answers are the same greedy tokens TGI's `/generate` gives. Skips when tritonclient
is not installed in the running virtualenv.
"""

import json
import urllib.request

import pytest

PROMPTS = ["Hello", "Once upon a time"]


def tgi_greedy(base_url, prompt, n):
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": n}}).encode()
    request = urllib.request.Request(f"{base_url}/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as r:
        return json.load(r)["generated_text"]


def texts(result):
    out = result.as_numpy("text_output")
    return [x.decode() if isinstance(x, bytes) else x for x in out.flatten()], out.shape


def test_tritonclient(base_url):
    np = pytest.importorskip("numpy")
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=base_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("llama") and client.is_model_ready("llama", model_version="1")
    assert not client.is_model_ready("llama", model_version="2")
    assert not client.is_model_ready("missing")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("llama")
    assert meta["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert meta["versions"] == ["1"]
    assert client.get_model_config("llama")["output"][0]["name"] == "text_output"

    want = [tgi_greedy(base_url, p, 6) for p in PROMPTS]
    parameters = {"max_tokens": 6, "temperature": 0}
    batch = np.array([p.encode() for p in PROMPTS], dtype=np.object_).reshape(2, 1)

    # The client's defaults: binary input, binary output.
    text = httpclient.InferInput("text_input", [2, 1], "BYTES")
    text.set_data_from_numpy(batch)
    result = client.infer(
        "llama", [text], outputs=[httpclient.InferRequestedOutput("text_output")], request_id="7", parameters=parameters
    )
    assert texts(result) == (want, (2, 1))
    response = result.get_response()
    assert (response["id"], response["model_version"]) == ("7", "1")

    # JSON tensors both ways, on a version; and no outputs named (all, in binary).
    text.set_data_from_numpy(batch, binary_data=False)
    json_out = httpclient.InferRequestedOutput("text_output", binary_data=False)
    result = client.infer("llama", [text], model_version="1", outputs=[json_out], parameters=parameters)
    assert texts(result) == (want, (2, 1))
    assert texts(client.infer("tiny-llama", [text], parameters=parameters)) == (want, (2, 1))

    # A parameter as a tensor, as TensorRT-LLM models take it.
    one = httpclient.InferInput("text_input", [1], "BYTES")
    one.set_data_from_numpy(np.array([PROMPTS[0].encode()], dtype=np.object_))
    max_tokens = httpclient.InferInput("max_tokens", [1, 1], "INT32")
    max_tokens.set_data_from_numpy(np.array([[6]], dtype=np.int32))
    assert texts(client.infer("llama", [one, max_tokens]))[0] == want[:1]

    # Errors arrive as the client's exception with the server's message and status.
    wrong = httpclient.InferInput("text_input", [1], "FP32")
    wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("llama", [wrong])
    assert "must be BYTES" in err.value.message() and err.value.status() == "400"
    with pytest.raises(InferenceServerException) as err:
        client.infer("missing", [one])
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException) as err:
        client.infer("llama", [one], parameters={"top_p": 5.0})
    assert "top_p" in err.value.message()
