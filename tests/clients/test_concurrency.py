"""Concurrent streaming clients (through the real `openai` client) get exactly the greedy text they
get alone, and /metrics counts what they did. The server runs several slots (--parallel), so the
eight clients are partly served at once and partly queued."""

from concurrent.futures import ThreadPoolExecutor

import openai

from _harness import MODEL, URL, metric, metrics, run

client = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=300)
QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Why is the sky blue?",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Who wrote Hamlet?",
    "Give me a synonym for happy.",
    "What do bees make?",
]


def ask(question):
    """The streamed greedy answer and its usage."""
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage


def test_eight_concurrent_streams_match_their_answers_alone():
    alone = [ask(q) for q in QUESTIONS]
    before = metrics()
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(ask, QUESTIONS))
    assert [t for t, _ in together] == [t for t, _ in alone]
    after = metrics()
    generated = sum(u.completion_tokens for _, u in together)
    prompts = sum(u.prompt_tokens for _, u in together)
    delta = lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)
    assert delta("exo_requests_total", endpoint="/v1/chat/completions", status="200") == len(QUESTIONS)
    assert delta("exo_generated_tokens_total", model=MODEL) == generated
    assert delta("exo_prompt_tokens_total", model=MODEL) == prompts
    assert delta("exo_time_to_first_token_seconds_count", model=MODEL) == len(QUESTIONS)
    assert delta("exo_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf") == len(QUESTIONS)
    assert delta("exo_generation_tokens_per_second_count", model=MODEL) == len(QUESTIONS)
    assert metric(after, "exo_requests_running", model=MODEL) == 0 and metric(after, "exo_queue_depth", model=MODEL) == 0
    assert metric(after, "exo_kv_tokens_capacity", model=MODEL) > 0


if __name__ == "__main__":
    run(globals())
