"""`exo serve --draft` and `--spec ngram` answer greedy requests exactly as a plain server does,
through the real `openai`, `ollama` and `anthropic` clients, alone and concurrently, and report
what speculation did: `usage.speculation` (OpenAI, Anthropic), `draft_tokens`/`draft_accepted`
(Ollama's final object) and the `exo_spec_*` counters of /metrics.

EXO_URL is a server with SmolLM2 drafting for itself (every draft is accepted); EXO_PLAIN_URL
serves the same model plainly, EXO_NGRAM_URL with prompt lookup."""

import os
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import ollama
import openai

from _harness import MODEL, URL, metric, metrics, run

PLAIN = os.environ["EXO_PLAIN_URL"]
NGRAM = os.environ["EXO_NGRAM_URL"]


def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "List the days of the week, one per line.",
    "Repeat after me: one two three, one two three, one two three.",
    "Write a haiku about the sea.",
    "Who wrote Hamlet?",
    "Count from one to ten.",
]


def chat(url, question, stream=False, **extra):
    """The greedy answer, its finish reason and its usage (from the final chunk when streamed)."""
    args = {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 48, **extra}
    if not stream:
        r = oai(url).chat.completions.create(**args)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    chunks = list(oai(url).chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    return text, reason, chunks[-1].usage


def spec_of(usage):
    return (usage.model_extra or {}).get("speculation")


def test_openai_answers_equal_plain_and_carry_the_counts():
    for stream in (False, True):
        for q in QUESTIONS:
            want_text, want_reason, want_usage = chat(PLAIN, q, stream)
            assert spec_of(want_usage) is None, want_usage
            for url, self_draft in ((URL, True), (NGRAM, False)):
                text, reason, usage = chat(url, q, stream)
                assert (text, reason) == (want_text, want_reason), (url, q, text, want_text)
                assert usage.completion_tokens == want_usage.completion_tokens
                s = spec_of(usage)
                assert s is not None and set(s) == {"drafted", "accepted", "acceptance_rate", "steps"}, usage
                assert 0 <= s["accepted"] <= s["drafted"], s
                if self_draft:
                    # The model drafting for itself agrees with itself.
                    assert s["drafted"] > 0 and s["accepted"] == s["drafted"] and s["acceptance_rate"] == 1.0, s


def test_stop_strings_and_max_tokens_cut_where_plain_decoding_does():
    for extra in ({"stop": ["day\n", "Tues"]}, {"max_tokens": 3}, {"stop": [" three,"], "max_tokens": 30}):
        for q in QUESTIONS[1:3]:
            want = chat(PLAIN, q, **extra)
            for url in (URL, NGRAM):
                got = chat(url, q, **extra)
                assert got[:2] == want[:2], (url, q, extra, got, want)


def test_logprobs_requests_decode_plainly_without_counts():
    text, _, usage = chat(URL, QUESTIONS[0], logprobs=True, top_logprobs=1)
    assert spec_of(usage) is None, usage
    assert text == chat(PLAIN, QUESTIONS[0])[0]


def test_concurrent_requests_equal_plain_and_metrics_count_them():
    want = [chat(PLAIN, q) for q in QUESTIONS]
    before = metrics()
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        got = list(pool.map(lambda q: chat(URL, q, True), QUESTIONS))
    after = metrics()
    assert [g[:2] for g in got] == [w[:2] for w in want]
    delta = lambda name: metric(after, name, model=MODEL) - metric(before, name, model=MODEL)
    specs = [spec_of(u) for _, _, u in got]
    assert delta("exo_spec_drafted_tokens_total") == sum(s["drafted"] for s in specs) > 0
    assert delta("exo_spec_accepted_tokens_total") == sum(s["accepted"] for s in specs)
    assert delta("exo_spec_steps_total") == sum(s["steps"] for s in specs) > 0


def test_ollama_final_object_has_the_draft_counts():
    msgs = [{"role": "user", "content": QUESTIONS[0]}]
    opts = {"temperature": 0, "num_predict": 48}
    want = ollama.Client(host=PLAIN).chat(model=MODEL, messages=msgs, options=opts)
    got = ollama.Client(host=URL).chat(model=MODEL, messages=msgs, options=opts)
    assert got.message.content == want.message.content and got.eval_count == want.eval_count
    # The client keeps only Ollama's own fields; exo's are read from the wire.
    body = {"model": MODEL, "messages": msgs, "options": opts, "stream": False}
    raw = httpx.post(f"{URL}/api/chat", json=body, timeout=300).json()
    assert raw["message"]["content"] == want.message.content
    assert raw["draft_tokens"] > 0 and raw["draft_accepted"] == raw["draft_tokens"], raw
    plain = httpx.post(f"{PLAIN}/api/chat", json=body, timeout=300).json()
    assert "draft_tokens" not in plain, plain


def test_anthropic_usage_has_the_counts():
    def ask(url):
        c = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        # This client version takes sampling settings only through `extra_body`.
        messages = [{"role": "user", "content": QUESTIONS[3]}]
        return c.messages.create(model=MODEL, max_tokens=48, messages=messages, extra_body={"temperature": 0})

    want, got = ask(PLAIN), ask(URL)
    assert got.content[0].text == want.content[0].text and got.usage.output_tokens == want.usage.output_tokens
    s = (got.usage.model_extra or {}).get("speculation")
    assert s and s["drafted"] > 0 and s["accepted"] == s["drafted"], got.usage
    assert not (want.usage.model_extra or {}).get("speculation"), want.usage


if __name__ == "__main__":
    run(globals())
