"""Greedy answers from the server equal `exo run --temperature 0` for the same prompt: raw text
through the legacy completions endpoint, and a chat turn through chat completions."""

import subprocess

import openai

from _harness import EXO_BIN, MODEL, URL, run

client = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=120)
N = 24


def exo_run(*args):
    assert EXO_BIN, "EXO_BIN must name the exo binary"
    out = subprocess.run([EXO_BIN, "run", MODEL, *args, "--temperature", "0", "-n", str(N), "-t", "1"],
                         capture_output=True, check=True, timeout=120)
    return out.stdout.decode()


def test_raw_completion_equals_exo_run_raw():
    for prompt in ("The three primary colors are", "def fibonacci(n):\n    "):
        want = exo_run(prompt, "--raw")
        got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=N, temperature=0).choices[0].text
        assert got == want, (prompt, got, want)


def test_chat_completion_equals_exo_run_chat():
    question = "What is the capital of France? Answer in one sentence."
    # `exo run` ends its one answer with a newline.
    want = exo_run(question).removesuffix("\n")
    got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=N, temperature=0)
    assert got.choices[0].message.content == want, (got.choices[0].message.content, want)


if __name__ == "__main__":
    run(globals())
