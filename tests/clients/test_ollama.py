"""`exo serve` through the real `ollama` client: version, tags, show, ps, generate and chat
(streamed NDJSON by default, and whole), options, keep_alive, log-probabilities, structured
output (`format`), tool calls and errors."""

import json
from datetime import datetime

import httpx
import ollama
import openai

from _harness import MODEL, URL, Raises, run

client = ollama.Client(host=URL, timeout=120)
GREEDY = {"temperature": 0, "num_predict": 12}


def test_version():
    r = httpx.get(f"{URL}/api/version", timeout=10)
    assert r.status_code == 200 and isinstance(r.json()["version"], str) and r.json()["version"]


def test_tags_show_and_ps_describe_the_model():
    models = client.list().models
    m = next(m for m in models if m.model == MODEL)
    assert m.size > 50_000_000 and isinstance(m.modified_at, datetime)
    d = m.details
    assert (d.format, d.family, d.quantization_level) == ("gguf", "llama", "Q4_1"), d
    assert d.parameter_size.endswith("M"), d
    show = client.show(MODEL)
    assert "<|im_start|>" in show.template
    assert show.modelinfo["general.architecture"] == "llama"
    assert show.modelinfo["llama.context_length"] == 8192 and show.modelinfo["llama.block_count"] == 30
    assert "completion" in show.capabilities and show.details.family == "llama"
    assert client.show(f"{MODEL}:latest").template == show.template
    ps = client.ps().models
    assert MODEL in [p.model for p in ps] and all(p.context_length > 0 for p in ps)


def test_generate_whole_and_streamed():
    r = client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length") and r.response
    assert 0 < r.eval_count <= 12 and r.prompt_eval_count > 5
    assert r.total_duration >= r.eval_duration > 0 and r.prompt_eval_duration > 0 and r.load_duration == 0
    parts = list(client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == r.response
    assert (parts[-1].eval_count, parts[-1].done_reason) == (r.eval_count, r.done_reason)


def test_streaming_is_the_default_and_ndjson():
    body = {"model": MODEL, "prompt": "Hi", "options": {"temperature": 0, "num_predict": 3}}
    r = httpx.post(f"{URL}/api/generate", json=body, timeout=60)
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = r.text.strip().split("\n")
    assert len(lines) >= 2 and '"done":true' in lines[-1]


def test_chat_whole_and_streamed():
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    r = client.chat(model=MODEL, messages=msgs, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content and r.done
    parts = list(client.chat(model=MODEL, messages=msgs, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == r.message.content
    assert parts[-1].done and parts[-1].eval_count == r.eval_count


def test_raw_generate_matches_openai_completions():
    # Same prompt, greedy, no penalty: the two APIs give the same text.
    prompt = "The first law of thermodynamics states that"
    oa = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0)
    want = oa.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    got = client.generate(model=MODEL, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 16, "repeat_penalty": 1.0})
    assert got.response == want


def test_options_stop_seed_and_keep_alive():
    full = client.generate(model=MODEL, prompt="Why is the sky blue?", options={"temperature": 0, "num_predict": 24}).response
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = client.generate(model=MODEL, prompt="Why is the sky blue?", options={"temperature": 0, "num_predict": 24, "stop": [stop]})
    assert cut.response == full[: full.index(stop)] and cut.done_reason == "stop"
    sampled = {"temperature": 1.0, "top_k": 100, "top_p": 0.95, "min_p": 0.01, "num_predict": 12, "num_ctx": 2048}
    a = client.generate(model=MODEL, prompt="Tell me a story.", options={**sampled, "seed": 3}, keep_alive="5m")
    b = client.generate(model=MODEL, prompt="Tell me a story.", options={**sampled, "seed": 3}, keep_alive=0)
    assert a.response == b.response
    others = {client.generate(model=MODEL, prompt="Tell me a story.", options={**sampled, "seed": s}).response for s in (4, 5)}
    assert others != {a.response}


def test_num_ctx_is_the_request_window():
    # The prompt alone: how many tokens it takes, from the server's own count.
    n = client.generate(model=MODEL, prompt="Tell me a story.", options={"temperature": 0, "num_predict": 1}).prompt_eval_count
    # No num_predict: generation ends where the window is full.
    r = client.generate(model=MODEL, prompt="Tell me a story.", options={"temperature": 0, "num_ctx": n + 3})
    assert r.eval_count == 3 and r.done_reason == "length", (r.eval_count, r.done_reason)
    # A prompt plus num_predict over the window is refused with both numbers.
    with Raises(ollama.ResponseError) as e:
        client.generate(model=MODEL, prompt="Tell me a story.", options={"num_ctx": n + 3, "num_predict": 10})
    assert e.value.status_code == 400 and str(n) in e.value.error and str(n + 3) in e.value.error, e.value.error


def test_num_predict_minus_one_runs_to_a_natural_end():
    r = client.generate(model=MODEL, prompt="Say OK.", options={"temperature": 0, "num_predict": -1})
    assert r.done_reason == "stop" and r.eval_count > 0


def test_empty_prompt_loads_the_model():
    r = client.generate(model=MODEL)
    assert r.done and r.done_reason == "load" and r.response == ""
    c = client.chat(model=MODEL, messages=[])
    assert c.done and c.done_reason == "load"


def test_logprobs():
    # Log-probs describe the model's raw distribution; without the repeat penalty (Ollama's default
    # 1.1) the greedy choice is also its most likely token.
    options = {**GREEDY, "repeat_penalty": 1.0}
    r = client.generate(model=MODEL, prompt="Hello", options=options, logprobs=True, top_logprobs=2)
    assert len(r.logprobs) == r.eval_count
    assert "".join(lp.token for lp in r.logprobs) == r.response
    for lp in r.logprobs:
        assert len(lp.top_logprobs) == 2 and lp.top_logprobs[0].token == lp.token


def test_format_json_and_schema():
    r = client.generate(model="qwen", prompt="Describe Paris as a JSON object with keys name and country.", format="json", options={**GREEDY, "num_predict": 60})
    assert isinstance(json.loads(r.response), dict) and r.done_reason == "stop", r
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    for stream in (False, True):
        messages = [{"role": "user", "content": "Describe Paris as JSON."}]
        r = client.chat(model="qwen", messages=messages, format=schema, options={**GREEDY, "num_predict": 40}, stream=stream)
        text = "".join(p.message.content for p in r) if stream else r.message.content
        doc = json.loads(text)
        assert set(doc) == {"city", "population"} and isinstance(doc["city"], str) and isinstance(doc["population"], int), doc


def test_tool_calls():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    # Greedy without Ollama's default repeat penalty, which pushes Qwen off its JSON call.
    options = {**GREEDY, "num_predict": 40, "repeat_penalty": 1.0}
    r = client.chat(model="qwen", messages=messages, tools=tools, options=options)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}, r.message
    streamed = [c for p in client.chat(model="qwen", messages=messages, tools=tools, options=options, stream=True) for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [("get_weather", {"city": "Paris"})], streamed
    history = messages + [r.message, {"role": "tool", "tool_name": "get_weather", "content": "18 C and sunny"}]
    answer = client.chat(model="qwen", messages=history, tools=tools, options=options)
    assert answer.message.content and not answer.message.tool_calls, answer.message


def test_errors_have_ollama_shape():
    with Raises(ollama.ResponseError) as e:
        client.generate(model="llama3", prompt="hi")
    assert e.value.status_code == 404 and "llama3" in e.value.error
    cases = [
        (dict(options={"temperature": "hot"}), "options.temperature"),
        (dict(options={"top_p": 1.5}), "options.top_p"),
        (dict(format={"type": "string", "format": "date"}), "format"),
        (dict(images=["aGVsbG8="]), "images"),
        (dict(think=True), "think"),
    ]
    for kw, field in cases:
        with Raises(ollama.ResponseError) as e:
            client.generate(model=MODEL, prompt="hi", **kw)
        assert e.value.status_code == 400 and field in e.value.error, (kw, e.value.error)
    with Raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi", "images": ["aGVsbG8="]}])
    assert e.value.status_code == 400 and "messages[0].images" in e.value.error
    r = httpx.post(f"{URL}/api/chat", content=b'{"model": ', timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON"), r.text


if __name__ == "__main__":
    run(globals())
