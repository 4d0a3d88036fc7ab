"""`exo serve` through the real `openai` client: models, chat completions and legacy completions,
streaming and not, stop strings, seeds, penalties, log-probabilities, tools and the errors.

The server serves SmolLM2 as EXO_MODEL and Qwen2.5-Coder-0.5B as "qwen" (a template that renders
`tools`)."""

import json

import httpx
import openai
import pydantic

from _harness import MODEL, URL, Raises, expect_status, run

client = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=120)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(**kw):
    args = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12)
    args.update(kw)
    return client.chat.completions.create(**args)


def streamed(**kw):
    """Text, chunks and the usage of a streamed chat completion."""
    chunks = list(chat(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_are_listed_and_retrievable():
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, "qwen"], ids
    m = client.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "exo")
    with Raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"


def test_chat_completion():
    r = chat()
    c = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    assert c.message.role == "assistant" and c.message.content, r
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 10 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if c.finish_reason == "length":
        assert u.completion_tokens == 12


def test_streaming_gives_the_same_answer_and_usage():
    whole = chat()
    text, chunks = streamed()
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_usage_and_done_marker():
    # The raw SSE stream ends with the literal `data: [DONE]`, which the client hides.
    body = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=4, stream=True)
    with httpx.stream("POST", f"{URL}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]", events
    assert all(e.startswith("data: ") for e in events)
    assert '"usage"' not in "".join(events)


def test_stop_strings_cut_the_answer():
    full = chat(max_tokens=20).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    for form in (stop, [stop, "never-generated-xyz"]):
        r = chat(max_tokens=20, stop=form)
        assert r.choices[0].message.content == full[: full.index(stop)], (form, r.choices[0].message.content)
        assert r.choices[0].finish_reason == "stop"
    text, _ = streamed(max_tokens=20, stop=stop)
    assert text == full[: full.index(stop)]


def test_max_completion_tokens_limits_the_answer():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}], temperature=0,
        max_completion_tokens=3,
    )
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_seed_makes_sampling_reproducible():
    prompt = [{"role": "user", "content": "Tell me a story."}]
    runs = [chat(messages=prompt, temperature=1.0, top_p=0.95, seed=s, max_tokens=16).choices[0].message.content for s in (7, 7, 8, 9)]
    assert runs[0] == runs[1]
    assert len(set(runs[1:])) > 1, runs


def test_penalties_change_a_repetitive_answer():
    # Greedy SmolLM2 keeps counting " 1"; penalties on the twelve " 1"s already seen make it stop.
    prompt = "1 1 1 1 1 1 1 1 1 1 1 1"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0).choices[0].text
    assert plain.startswith(" 1 1"), plain
    penalized = [
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, frequency_penalty=2.0),
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, presence_penalty=2.0, frequency_penalty=0.5),
        # llama.cpp's repeat_penalty, sent outside the fields the client knows.
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, extra_body={"repeat_penalty": 3.0}),
    ]
    for r in penalized:
        assert not r.choices[0].text.startswith(" 1 1"), r


def test_logprobs_describe_each_token():
    r = chat(logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert b"".join(bytes(t.bytes) for t in content).decode() == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert (t.token, t.logprob) == (t.top_logprobs[0].token, t.top_logprobs[0].logprob)
    assert chat().choices[0].logprobs is None
    _, chunks = streamed(logprobs=True, top_logprobs=2)
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            tokens = c.choices[0].logprobs.content
            assert "".join(t.token for t in tokens) == c.choices[0].delta.content


def test_legacy_completions():
    prompt = "The three primary colors are"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    c = r.choices[0]
    assert r.object == "text_completion" and c.text and c.finish_reason in ("stop", "length")
    lp = c.logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    stream = client.completions.create(model=MODEL, prompt=[prompt], max_tokens=10, temperature=0, stream=True)
    parts = list(stream)
    assert "".join(p.choices[0].text for p in parts) == c.text
    assert parts[-1].choices[0].finish_reason == c.finish_reason


def test_tools_reach_the_chat_template():
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    plain = client.chat.completions.create(model="qwen", messages=ask, temperature=0, max_tokens=30)
    with_tools = client.chat.completions.create(model="qwen", messages=ask, temperature=0, max_tokens=30, tools=tools)
    # Qwen's template lists the tools in the system turn and asks for calls as JSON in
    # <tool_call> blocks; greedy Qwen-0.5B answers with the bare JSON call, which is read as one.
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 50, (plain.usage, with_tools.usage)
    assert_weather_call(with_tools)
    assert "get_weather" not in plain.choices[0].message.content
    none = client.chat.completions.create(model="qwen", messages=ask, temperature=0, max_tokens=1, tools=tools, tool_choice="none")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    # A conversation that already holds a call and its result renders too.
    history = ask + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    r = client.chat.completions.create(model="qwen", messages=history, temperature=0, max_tokens=12, tools=tools)
    assert r.choices[0].message.content


WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def assert_weather_call(r):
    """`r` answers with one get_weather call whose arguments follow the tool's schema."""
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_"), call
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and set(args) <= {"city", "unit"}, args
    assert args.get("unit", "celsius") in ("celsius", "fahrenheit"), args
    return call, args


def streamed_calls(**kw):
    """Streams a qwen chat and gathers its content and its calls by index, as OpenAI streams them."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model="qwen", temperature=0, stream=True, **kw):
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = d.id or c["id"]
            c["name"] += d.function.name or ""
            c["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, calls, finish


def test_json_schema_response_format():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    for model in (MODEL, "qwen"):
        r = client.chat.completions.create(
            model=model, temperature=0, max_tokens=60,
            messages=[{"role": "user", "content": "Describe a person called Ann, aged 31, as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        )
        doc = json.loads(r.choices[0].message.content)
        assert set(doc) == {"name", "age", "tags"} and isinstance(doc["name"], str), doc
        assert isinstance(doc["age"], int) and not isinstance(doc["age"], bool), doc
        assert len(doc["tags"]) <= 3 and set(doc["tags"]) <= {"a", "b"}, doc
        assert r.choices[0].finish_reason == "stop", r


def test_json_object_mode():
    for stream in (False, True):
        args = dict(messages=[{"role": "user", "content": "List three colours in JSON."}], max_tokens=80, response_format={"type": "json_object"})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in chat(stream=True, **args))
        else:
            r = chat(**args)
            assert r.choices[0].finish_reason == "stop", r
            text = r.choices[0].message.content
        assert isinstance(json.loads(text), dict), text


def test_parse_with_a_pydantic_model():
    class City(pydantic.BaseModel):
        name: str
        country: str
        population: int

    r = client.chat.completions.parse(
        model="qwen", temperature=0, max_tokens=60, response_format=City,
        messages=[{"role": "user", "content": "Describe Paris as JSON with name, country and population."}],
    )
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.name, r


def test_forced_and_automatic_tool_calls():
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}, "auto"):
        r = client.chat.completions.create(model="qwen", messages=WEATHER_QUESTION, temperature=0, max_tokens=40, tools=WEATHER, tool_choice=choice)
        call, args = assert_weather_call(r)
        assert args["city"] == "Paris", args
        content, calls, finish = streamed_calls(messages=WEATHER_QUESTION, max_tokens=40, tools=WEATHER, tool_choice=choice)
        assert finish == "tool_calls" and content == "" and list(calls) == [0], (content, calls)
        assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_"), calls
        assert json.loads(calls[0]["arguments"]) == args, (calls, args)
    # SmolLM2's template knows no tools: exo describes them in the system turn, and forcing a
    # call still gives one that follows the schema.
    r = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, temperature=0, max_tokens=80, tools=WEATHER, tool_choice="required")
    assert_weather_call(r)
    # The answer to the call's result is text.
    call = r.choices[0].message.tool_calls[0]
    history = WEATHER_QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "sunny"}'},
    ]
    for model in (MODEL, "qwen"):
        r = client.chat.completions.create(model=model, messages=history, temperature=0, max_tokens=20, tools=WEATHER)
        assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r


def test_content_parts_and_system_roles():
    parts = [{"role": "developer", "content": "You answer briefly."},
             {"role": "user", "content": [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]}]
    joined = [{"role": "system", "content": "You answer briefly."},
              {"role": "user", "content": "What is the capital\nof France?"}]
    assert chat(messages=parts).choices[0].message.content == chat(messages=joined).choices[0].message.content


def test_errors_have_openai_shape():
    cases = [
        (dict(n=2), "n"),
        (dict(temperature=2.5), "temperature"),
        (dict(top_p=-0.1), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
        (dict(top_logprobs=2), "top_logprobs"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}),
         "response_format.json_schema.schema"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tool_choice={"type": "function", "function": {"name": "g"}}, tools=[{"type": "function", "function": {"name": "f"}}]), "tool_choice"),
        (dict(tool_choice="required", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}]),
         "tools[0].function.parameters"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]), "messages[0].content[0].type"),
        (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
        (dict(messages=[]), "messages"),
        (dict(logit_bias={"1": 5}), "logit_bias"),
    ]
    for kw, param in cases:
        with Raises(openai.BadRequestError) as e:
            chat(**kw)
        err = e.value.body
        assert err["type"] == "invalid_request_error" and err["param"] == param, (kw, err)
        assert param in err["message"], (kw, err)
    with Raises(openai.NotFoundError) as e:
        chat(model="gpt-4o")
    assert e.value.body["code"] == "model_not_found" and "gpt-4o" in e.value.body["message"]
    with Raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, echo=True)
    expect_status(e.value, 400)


if __name__ == "__main__":
    run(globals())
