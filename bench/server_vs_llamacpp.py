#!/usr/bin/env python3
"""`exo serve` vs llama.cpp's server, in one run: aggregate generation throughput and time to
first token over streaming OpenAI completions at several numbers of concurrent clients, and the
time to first token of a second request that shares a long system prompt with the first.

The peer is llama.cpp's own `llama-server` (built by bench/build-llama-server.sh from the same
llama.cpp release as the reference venv's llama-cpp-python), started with as many parallel slots
(-np) as the most clients measured and a context of --ctx tokens per slot, so it batches
concurrent requests continuously; exo runs with the same number of --parallel requests. With
--peer llama-cpp-python, llama-cpp-python's server is used instead (one request at a time).

Both servers load the same GGUF with the same thread count and run one after the other on the
same machine. Each of C clients sends --requests streamed `/v1/completions` requests (greedy,
--max-tokens each, prompts that differ per request so no answer comes from a prompt cache) one
after another; a warm-up request to each server comes first and is not counted.
- aggregate tokens/s: generated tokens of all requests / wall time from the first request sent to
  the last stream finished (prompt processing and queueing included, as serving benchmarks report
  output throughput);
- TTFT: per request, from sending it to the first chunk that carries text (median and p90);
- shared prefix: two chat requests with the same ~1k-token system prompt and different questions,
  one after the other; TTFT of each, and first / second.
Generated tokens are counted as text-carrying stream chunks for both servers (each emits one chunk
per token, except where a token ends inside a UTF-8 character).

Usage: bench/server_vs_llamacpp.py [--threads 2] [--models a,b] [--concurrency 1,4,16,32]
                                   [--requests 3] [--max-tokens 128] [--exo PATH] [--out FILE]
Run it with the reference venv's Python (scripts/setup-reference.sh). Prints Markdown tables with
ratios (throughput exo / llama.cpp; TTFT llama.cpp / exo, so that > 1 means exo is better) and
writes the raw numbers as JSON to --out.
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _machine import cpu_name

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
TOPICS = ["a lighthouse keeper", "a robot who learns to paint", "the first city on Mars", "a dragon afraid of heights",
          "a detective in ancient Rome", "a talking river", "an inventor of clocks", "a ship lost in fog",
          "a library that never closes", "a baker on the moon", "a musician who lost her hearing", "a garden in winter"]


def models_dir():
    return os.path.join(os.environ.get("EXO_HOME", os.path.expanduser("~/.exo")), "models")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompt(i):
    return f"Write a long and detailed story about {TOPICS[i % len(TOPICS)]} (story {i}).\n\nOnce upon a time,"


class Server:
    """A server process listening on 127.0.0.1:port, stopped on exit."""

    def __init__(self, name, cmd, port, log):
        self.name, self.port = name, port
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/v1/models")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout} s; see {self.log.name}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def stream_events(port, path, body):
    """POSTs `body` to a streaming endpoint; yields (seconds since sending, event) per SSE event."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    try:
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                yield time.perf_counter() - t0, json.loads(line[6:])
    finally:
        c.close()


def stream_completion(port, model, text, max_tokens):
    """Sends one streamed completion; returns (ttft seconds, generated chunks, total seconds)."""
    body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    ttft, chunks = None, 0
    for at, event in stream_events(port, "/v1/completions", body):
        choices = event.get("choices") or []
        if choices and choices[0].get("text"):
            chunks += 1
            if ttft is None:
                ttft = at
    return ttft if ttft is not None else float("nan"), chunks, time.perf_counter() - t0


def measure(port, model, concurrency, requests, max_tokens, offset):
    """Aggregate tokens/s and TTFTs of `concurrency` clients sending `requests` each."""
    counter = iter(range(offset, offset + concurrency * requests))
    lock = threading.Lock()

    def client(_):
        out = []
        for _ in range(requests):
            with lock:
                i = next(counter)
            out.append(stream_completion(port, model, prompt(i), max_tokens))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
    wall = time.perf_counter() - t0
    tokens = sum(r[1] for r in results)
    ttfts = sorted(r[0] for r in results)
    return {"tokens": tokens, "wall_s": wall, "tps": tokens / wall, "ttft_median_s": statistics.median(ttfts),
            "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))], "requests": len(results)}


SYSTEM = ("You are the support assistant of a large hardware store. Answer politely and precisely. " +
          " ".join(f"Rule {i}: never recommend product {i} for outdoor use, and always mention the warranty of aisle {i}."
                   for i in range(40)))


def chat_ttft(port, model, question):
    """TTFT of one streamed chat completion with the shared system prompt."""
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": 8, "temperature": 0, "stream": True}
    for at, event in stream_events(port, "/v1/chat/completions", body):
        if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
            return at
    return float("nan")


def server_cmd(kind, a, path, name, port, parallel):
    if kind == "exo":
        return [a.exo, "serve", "-m", f"{name}={path}", "--port", str(port), "-t", str(a.threads), "--ctx-size", str(a.ctx),
                "--parallel", str(parallel), "--queue-size", "256"]
    if a.peer == "llama-server":
        return [a.llama_server, "-m", path, "--alias", name, "--port", str(port), "-t", str(a.threads), "-tb", str(a.threads),
                "-c", str(a.ctx * parallel), "-np", str(parallel), "-b", "512", "--no-webui"]
    return [sys.executable, "-m", "llama_cpp.server", "--model", path, "--model_alias", name, "--port", str(port),
            "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads), "--n_ctx", str(a.ctx),
            "--interrupt_requests", "False", "--verbose", "False"]


def run_server(kind, a, path, name, concurrencies, logdir):
    port = free_port()
    cmd = server_cmd(kind, a, path, name, port, max(concurrencies))
    out = {}
    with Server(kind, cmd, port, os.path.join(logdir, f"{kind}-{name}.log")) as s:
        s.wait_ready()
        stream_completion(port, name, prompt(10_000), a.max_tokens)  # warm-up
        for i, c in enumerate(concurrencies):
            out[c] = measure(port, name, c, a.requests, a.max_tokens, offset=1000 * i)
            print(f"{name} {kind} c={c}: {out[c]['tps']:.1f} tok/s, TTFT {out[c]['ttft_median_s']:.3f} s", file=sys.stderr)
        first = chat_ttft(port, name, "Which aisle has the garden hoses?")
        second = chat_ttft(port, name, "Do you sell ladders?")
        out["shared_prefix"] = {"first_ttft_s": first, "second_ttft_s": second}
        print(f"{name} {kind} shared prefix: TTFT {first:.3f} s then {second:.3f} s", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--peer", choices=["llama-server", "llama-cpp-python"], default="llama-server")
    ap.add_argument("--llama-server", default=os.path.expanduser("~/.cache/exo-dev/llama.cpp/build/bin/llama-server"))
    ap.add_argument("--exo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "exo"))
    ap.add_argument("--out", default="bench/results/server_vs_llamacpp.json")
    a = ap.parse_args()
    concurrencies = [int(c) for c in a.concurrency.split(",")]

    import llama_cpp
    logdir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(logdir, exist_ok=True)
    raw = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(), "threads": a.threads,
           "max_tokens": a.max_tokens, "requests_per_client": a.requests, "ctx": a.ctx, "peer": a.peer,
           "llama_cpp_python": llama_cpp.__version__, "models": {}}
    for name in a.models.split(","):
        path = os.path.join(models_dir(), name + ".gguf")
        raw["models"][name] = {kind: run_server(kind, a, path, name, concurrencies, logdir) for kind in ("exo", "llama.cpp")}
    print(f"\nthreads={a.threads}, max_tokens={a.max_tokens}, {a.requests} requests per client, {max(concurrencies)} parallel "
          f"slots each; peer {a.peer} (llama.cpp of llama-cpp-python {llama_cpp.__version__}); {raw['cpu']}\n")
    print("| model | clients | exo tok/s | llama.cpp tok/s | ratio | exo TTFT s (p50/p90) | llama.cpp TTFT s (p50/p90) | TTFT ratio (llama/exo) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in raw["models"].items():
        for c in concurrencies:
            e, l = r["exo"][c], r["llama.cpp"][c]
            print(f"| {name} | {c} | {e['tps']:.1f} | {l['tps']:.1f} | {e['tps'] / l['tps']:.2f} | "
                  f"{e['ttft_median_s']:.3f} / {e['ttft_p90_s']:.3f} | {l['ttft_median_s']:.3f} / {l['ttft_p90_s']:.3f} | "
                  f"{l['ttft_median_s'] / e['ttft_median_s']:.2f} |")
    print("\n| model | exo TTFT 1st / 2nd s | exo speed-up | llama.cpp TTFT 1st / 2nd s | llama.cpp speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, r in raw["models"].items():
        e, l = r["exo"]["shared_prefix"], r["llama.cpp"]["shared_prefix"]
        print(f"| {name} | {e['first_ttft_s']:.3f} / {e['second_ttft_s']:.3f} | {e['first_ttft_s'] / e['second_ttft_s']:.1f}x | "
              f"{l['first_ttft_s']:.3f} / {l['second_ttft_s']:.3f} | {l['first_ttft_s'] / l['second_ttft_s']:.1f}x |")
    with open(a.out, "w") as f:
        json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
