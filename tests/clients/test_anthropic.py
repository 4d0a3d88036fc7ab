"""`exo serve` through the real `anthropic` client: the Messages API whole and as its event stream,
system prompts, content blocks, stop sequences, sampling settings, tool use and errors.

This client version has no arguments for temperature, top_p and top_k; they go in `extra_body`,
as the JSON fields the Messages API defines."""

import anthropic
import httpx

from _harness import MODEL, URL, Raises, run

client = anthropic.Anthropic(base_url=URL, api_key="unused", max_retries=0, timeout=120)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# This client no longer has arguments for the sampling settings the Messages API accepts.
SAMPLING = ("temperature", "top_p", "top_k")


def create(**kw):
    """messages.create, greedy unless `temperature` says otherwise."""
    args = dict(model=MODEL, max_tokens=12, messages=QUESTION)
    args.update(kw)
    extra = {"temperature": 0}
    extra.update({k: args.pop(k) for k in SAMPLING if k in args})
    return client.messages.create(extra_body=extra, **args)


def test_message():
    m = create()
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL and m.id.startswith("msg_")
    assert len(m.content) == 1 and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert m.usage.input_tokens > 10 and 0 < m.usage.output_tokens <= 12
    if m.stop_reason == "max_tokens":
        assert m.usage.output_tokens == 12


def test_stream_helper_gives_the_same_message():
    whole = create()
    with client.messages.stream(model=MODEL, max_tokens=12, messages=QUESTION, extra_body={"temperature": 0}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens, whole.usage.output_tokens)


def test_raw_event_sequence():
    events = list(create(stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"], kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds
    assert set(kinds[2:-3]) == {"content_block_delta"}, kinds
    assert events[0].message.usage.input_tokens > 10
    assert all(e.delta.type == "text_delta" for e in events if e.type == "content_block_delta")
    assert events[-2].delta.stop_reason in ("end_turn", "max_tokens") and events[-2].usage.output_tokens > 0


def test_system_prompt_and_content_blocks():
    a = create(system="You are a geography teacher.", messages=[{"role": "user", "content": "Name a river."}])
    b = create(
        system=[{"type": "text", "text": "You are a geography teacher."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a river."}]}],
    )
    assert a.content[0].text == b.content[0].text
    assert a.usage.input_tokens == b.usage.input_tokens
    plain = create(messages=[{"role": "user", "content": "Name a river."}])
    assert plain.usage.input_tokens != a.usage.input_tokens


def test_stop_sequences():
    full = create(max_tokens=20).content[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    m = create(max_tokens=20, stop_sequences=[stop])
    assert m.content[0].text == full[: full.index(stop)]
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", stop)


def test_top_k_one_is_greedy():
    greedy = create(max_tokens=16).content[0].text
    assert create(max_tokens=16, temperature=1.0, top_k=1).content[0].text == greedy
    assert create(max_tokens=16, temperature=0.7, top_p=0.9).content[0].text


def test_multi_turn_conversation():
    m = create(messages=QUESTION + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}])
    assert m.content[0].text and m.usage.input_tokens > create().usage.input_tokens


WEATHER = [{
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
}]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def test_tool_use():
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}, {"type": "auto"}):
        m = create(model="qwen", max_tokens=40, messages=WEATHER_QUESTION, tools=WEATHER, tool_choice=choice)
        assert m.stop_reason == "tool_use", m
        (use,) = [b for b in m.content if b.type == "tool_use"]
        assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id.startswith("toolu_"), m
        with client.messages.stream(model="qwen", max_tokens=40, messages=WEATHER_QUESTION, tools=WEATHER, tool_choice=choice,
                                    extra_body={"temperature": 0}) as s:
            final = s.get_final_message()
        assert final.stop_reason == "tool_use", final
        assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [("get_weather", {"city": "Paris"})], final
    history = WEATHER_QUESTION + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}]},
    ]
    m = create(model="qwen", max_tokens=20, messages=history, tools=WEATHER)
    assert m.stop_reason != "tool_use" and m.content[0].type == "text" and m.content[0].text, m
    none = create(model="qwen", max_tokens=1, messages=WEATHER_QUESTION, tools=WEATHER, tool_choice={"type": "none"})
    plain = create(model="qwen", max_tokens=1, messages=WEATHER_QUESTION)
    assert none.usage.input_tokens == plain.usage.input_tokens


def test_errors_have_anthropic_shape():
    cases = [
        (dict(temperature=1.5), "temperature"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}]}]), "messages[0].content[0].type"),
        (dict(messages=[{"role": "system", "content": "hi"}]), "messages[0].role"),
        (dict(messages=[]), "messages"),
        (dict(tools=WEATHER, tool_choice={"type": "tool", "name": "get_time"}), "tool_choice"),
        (dict(tools=[{"name": "f", "input_schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}],
              tool_choice={"type": "any"}), "tools[0].input_schema"),
    ]
    for kw, field in cases:
        with Raises(anthropic.BadRequestError) as e:
            create(**kw)
        err = e.value.body
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
        assert field in err["error"]["message"], (kw, err)
    with Raises(anthropic.NotFoundError) as e:
        create(model="claude-unknown")
    assert e.value.body["error"]["type"] == "not_found_error" and "claude-unknown" in e.value.body["error"]["message"]
    r = httpx.post(f"{URL}/v1/messages", json={"model": MODEL, "messages": QUESTION}, timeout=10)
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"], r.text


if __name__ == "__main__":
    run(globals())
