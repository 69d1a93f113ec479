"""KV events as vLLM publishes them (msgpack over ZeroMQ PUB), read by a subscriber
written the way llm-d's and Dynamo's are: it rebuilds the set of cached blocks from
BlockStored / BlockRemoved / AllBlocksCleared and must end with exactly the blocks the
server says it holds. Skips without pyzmq and msgpack.
"""

import json
import time
import urllib.request

import pytest


def generate(url, prompt):
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 4}}).encode()
    req = urllib.request.Request(f"{url}/generate", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


def metric(url, name):
    with urllib.request.urlopen(f"{url}/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_a_subscriber_rebuilds_the_servers_cached_blocks(kv_events_server):
    zmq = pytest.importorskip("zmq")
    msgpack = pytest.importorskip("msgpack")
    url, endpoint = kv_events_server
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(endpoint)
    sub.setsockopt_string(zmq.SUBSCRIBE, "kv-events")
    time.sleep(0.5)  # ZeroMQ's slow joiner: batches before the connection are lost

    # More distinct prompts (each ~6 full blocks) than 85 blocks hold: evictions; then
    # the first prompts again, some of whose blocks are still cached.
    prompts = [f"{i} " + "the river sang to the stones " * 16 for i in range(24)]
    for p in prompts + prompts[:4]:
        generate(url, p)
    deadline = time.time() + 10
    while metric(url, "rill_kv_blocks_used") != 0 and time.time() < deadline:
        time.sleep(0.05)

    cached, seqs, stored, removed = set(), [], 0, 0
    while sub.poll(500):
        topic, seq, payload = sub.recv_multipart()
        assert topic == b"kv-events"
        seqs.append(int.from_bytes(seq, "big"))
        ts, events = msgpack.unpackb(payload)[:2]
        assert ts > 1.7e9
        for event in events:
            tag = event[0]
            if tag == "BlockStored":
                hashes, parent, tokens, block_size, lora_id, medium = event[1:]
                assert (len(tokens), block_size, lora_id, medium) == (16, 16, None, "CPU"), event
                assert parent is None or isinstance(parent, int)
                assert not (set(hashes) & cached), "stored twice without a removal"
                cached |= set(hashes)
                stored += 1
            elif tag == "BlockRemoved":
                assert set(event[1]) <= cached, "removed a block never stored"
                cached -= set(event[1])
                removed += 1
            else:
                assert tag == "AllBlocksCleared"
                cached.clear()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in the sequence numbers"
    assert stored > 85 and removed > 0, (stored, removed)
    assert len(cached) == metric(url, "rill_kv_blocks_cached")
