"""The server's limits through the real clients, against a server started with an API key,
one slot (--parallel 1), a queue of one (--queue-size 1), a 256-token context and a 64 KiB body
limit: 401 without the key, 413, prompt + max_tokens over the context, 503 when the queue is full,
a disconnecting client freeing its slot, and bad input never answered with a 5xx."""

import json
import re

import anthropic
import httpx
import ollama
import openai

from _harness import API_KEY, MODEL, URL, Raises, metric, metrics, run

assert API_KEY, "this script expects a server started with --api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CTX = 256
COUNTING = "1 1 1 1 1 1 1 1 1 1 1 1"  # greedy SmolLM2 keeps counting " 1" until max_tokens

oa = openai.OpenAI(base_url=f"{URL}/v1", api_key=API_KEY, max_retries=0, timeout=60)
ol = ollama.Client(host=URL, headers=AUTH, timeout=60)
an = anthropic.Anthropic(base_url=URL, api_key=API_KEY, max_retries=0, timeout=60)


def post(path, body, headers=AUTH):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{URL}{path}", content=data, headers=headers, timeout=60)


def test_health_needs_no_key():
    assert httpx.get(f"{URL}/health", timeout=10).status_code == 200


def test_missing_or_wrong_key_is_401_in_each_shape():
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": API_KEY + "x"}):
        r = httpx.get(f"{URL}/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
        r = httpx.get(f"{URL}/metrics", headers=headers, timeout=10)
        assert r.status_code == 401
    with Raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{URL}/v1", api_key="wrong", max_retries=0).models.list()
    for client in (ollama.Client(host=URL), ollama.Client(host=URL, headers={"Authorization": "Bearer nope"})):
        with Raises(ollama.ResponseError) as e:
            client.list()
        assert e.value.status_code == 401 and "API key" in e.value.error
    with Raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=URL, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"


def test_the_key_opens_every_api():
    assert [m.id for m in oa.models.list().data] == [MODEL]
    assert oa.completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0).choices[0].text
    assert ol.generate(model=MODEL, prompt="Hello", options={"num_predict": 2}).done
    # Anthropic's client sends the key as x-api-key.
    assert an.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hello"}]).content


def test_body_over_the_limit_is_413():
    big = "word " * 20_000  # 100 KB, over the 64 KiB limit
    r = post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    r = post("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    r = post("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": big}]})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large", r.text
    with Raises(openai.APIStatusError) as e:
        oa.completions.create(model=MODEL, prompt=big, max_tokens=2)
    assert e.value.status_code == 413


def test_prompt_plus_max_tokens_over_the_context_names_both_numbers():
    long = "Tell me everything about the history of the Roman empire, its emperors and its wars. " * 3
    pattern = re.compile(r"the prompt has (\d+) tokens and max_tokens is (\d+): (\d+) tokens in all, more than the context size of (\d+) tokens")
    with Raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=200)
    assert e.value.body["code"] == "context_length_exceeded", e.value.body
    m = pattern.search(e.value.body["message"])
    assert m, e.value.body
    prompt, max_tokens, total, ctx = map(int, m.groups())
    assert (max_tokens, ctx, total) == (200, CTX, prompt + 200) and prompt + 200 > CTX
    # The same prompt fits once max_tokens leaves room.
    ok = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=CTX - prompt, temperature=0)
    assert ok.usage.prompt_tokens == prompt
    with Raises(ollama.ResponseError) as e:
        ol.chat(model=MODEL, messages=[{"role": "user", "content": long}], options={"num_predict": 200})
    assert e.value.status_code == 400 and pattern.search(e.value.error), e.value.error
    with Raises(anthropic.BadRequestError) as e:
        an.messages.create(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": long}])
    assert pattern.search(e.value.body["error"]["message"]), e.value.body
    # Without max_tokens, a prompt that fills the context alone is refused too.
    with Raises(openai.BadRequestError) as e:
        oa.completions.create(model=MODEL, prompt=long * 8)
    assert "leaves no room" in e.value.body["message"] and str(CTX) in e.value.body["message"]


def test_context_policies_per_request_through_each_client():
    long = "Tell me everything about the history of the Roman empire, its emperors and its wars. " * 3
    # truncate: the oldest turns go, the system prompt and the question stay, the answer fits.
    turns = [{"role": "system", "content": "Answer in one word."}]
    for i in range(8):
        turns += [{"role": "user", "content": long}, {"role": "assistant", "content": f"Answer {i}."}]
    turns.append({"role": "user", "content": "Which city was its capital?"})
    r = oa.chat.completions.create(model=MODEL, messages=turns, max_tokens=16, temperature=0, extra_body={"context_policy": "truncate"})
    assert r.usage.prompt_tokens + 16 <= CTX, r.usage
    # (the ollama client sends no extra fields, so this one goes as plain JSON)
    r = post("/api/chat", {"model": MODEL, "messages": turns, "stream": False, "options": {"num_predict": 16}, "context_policy": "truncate"})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] + 16 <= CTX, r.text
    r = an.messages.create(model=MODEL, max_tokens=16, messages=turns[1:], system="Answer in one word.", extra_body={"context_policy": "truncate"})
    assert r.usage.input_tokens + 16 <= CTX, r.usage
    # shift: generation runs past the window, keeping n_keep tokens.
    r = oa.completions.create(model=MODEL, prompt=COUNTING, max_tokens=2 * CTX, temperature=0, extra_body={"context_policy": "shift", "n_keep": 4})
    assert r.usage.completion_tokens == 2 * CTX and r.choices[0].finish_reason == "length", r.usage
    # A policy that does not exist is named.
    with Raises(openai.BadRequestError) as e:
        oa.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"context_policy": "squeeze"})
    assert e.value.body["param"] == "context_policy" and "squeeze" in e.value.body["message"], e.value.body


def stream_counting(max_tokens=200):
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    return httpx.stream("POST", f"{URL}/v1/completions", json=body, headers=AUTH, timeout=60)


def content_lines(response):
    """The SSE data lines of a streamed completion that carry text."""
    for line in response.iter_lines():
        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
            yield line


def test_full_queue_is_503_with_retry_after():
    with stream_counting() as running:
        # Keep the line iterator: closing it would close the response, and cancel the request.
        lines = content_lines(running)
        next(lines)  # the only slot is generating
        with stream_counting() as queued:
            assert queued.status_code == 200
            assert metric(metrics(), "exo_queue_depth", model=MODEL) == 1
            r = post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.headers)
            assert r.json()["error"]["type"] == "server_error" and "busy" in r.json()["error"]["message"]
            r = post("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False})
            assert r.status_code == 503 and "busy" in r.json()["error"]
            r = post("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
            with Raises(openai.APIStatusError) as e:
                oa.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            assert e.value.status_code == 503
    wait_idle()


def wait_idle(timeout=10.0):
    """Polls /metrics until no request runs or waits; returns the last scrape."""
    import time

    deadline = time.time() + timeout
    while True:
        m = metrics()
        if metric(m, "exo_requests_running", model=MODEL) == 0 and metric(m, "exo_queue_depth", model=MODEL) == 0:
            return m
        assert time.time() < deadline, f"requests still held after {timeout} s"
        time.sleep(0.02)


def test_disconnect_after_two_chunks_frees_the_slot():
    prompt_tokens = oa.completions.create(model=MODEL, prompt=COUNTING, max_tokens=1).usage.prompt_tokens
    before = metrics()
    with stream_counting(max_tokens=CTX - prompt_tokens) as r:
        lines = content_lines(r)
        next(lines)
        next(lines)
    m = wait_idle()
    assert metric(m, "exo_kv_tokens_running", model=MODEL) == 0
    assert metric(m, "exo_kv_blocks_free", model=MODEL) == metric(m, "exo_kv_blocks_total", model=MODEL), m
    # It stopped within a few steps of the disconnect, far short of its max_tokens: few new
    # full blocks were left in the prefix cache.
    cached = metric(m, "exo_kv_tokens_cached", model=MODEL) - metric(before, "exo_kv_tokens_cached", model=MODEL)
    assert cached < 48, cached
    # The cancelled request never finished: nothing was added to the generated-token count.
    assert metric(m, "exo_generated_tokens_total", model=MODEL) == metric(before, "exo_generated_tokens_total", model=MODEL)
    # The next request is served at once.
    r = oa.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3
    assert metric(metrics(), "exo_requests_total", endpoint="/v1/completions", status="200") >= 2


def test_bad_input_is_never_a_server_error():
    bodies = [
        b"", b"null", b"[]", b"{}", b"\xff\xfe\x00", b"{" * 10_000, b"[" * 10_000 + b"]" * 10_000,
        b'{"model": 5}', b'{"model": "x", "messages": "hi"}', b'{"model": "' + MODEL.encode() + b'", "max_tokens": 1e400}',
        b'{"temperature": NaN}', json.dumps({"model": MODEL, "messages": [{"role": "user", "content": {"a": 1}}]}).encode(),
        json.dumps({"model": MODEL, "prompt": "hi", "stop": [1, 2]}).encode(),
        json.dumps({"model": MODEL, "prompt": "hi", "options": []}).encode(),
        json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": -5, "options": {"num_predict": -7}}).encode(),
        json.dumps({"model": MODEL, "prompt": "", "messages": [{"role": "user"}], "max_tokens": 1}).encode(),
        json.dumps({"model": MODEL, "prompt": "\u0000\ud7ff", "max_tokens": 1, "seed": -1}).encode(),
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**70}).encode(),
    ]
    paths = ["/v1/chat/completions", "/v1/completions", "/v1/messages", "/api/generate", "/api/chat", "/api/show"]
    for path in paths:
        for body in bodies:
            r = post(path, body)
            assert r.status_code < 500, (path, body[:60], r.status_code, r.text)
            if r.status_code >= 400:
                json.loads(r.content)  # an error body the API's clients can parse
    assert httpx.get(f"{URL}/health", timeout=10).status_code == 200


if __name__ == "__main__":
    run(globals())
