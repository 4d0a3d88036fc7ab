#!/usr/bin/env python3
"""`exo serve` vs llama.cpp's server (llama-cpp-python's `python -m llama_cpp.server`), in one run:
aggregate generation throughput and time to first token over streaming OpenAI completions, with
1 and with 8 clients at once.

Both servers load the same GGUF with the same thread count and run one after the other on the
same machine. Each of C clients sends --requests streamed `/v1/completions` requests (greedy,
--max-tokens each, prompts that differ per request so no answer comes from a prompt cache) one
after another; a warm-up request to each server comes first and is not counted.
- aggregate tokens/s: generated tokens of all requests / wall time from the first request sent to
  the last stream finished (prompt processing and queueing included, as serving benchmarks report
  output throughput);
- TTFT: per request, from sending it to the first chunk that carries text (median and p90).
Generated tokens are counted as text-carrying stream chunks for both servers (each emits one chunk
per token, except where a token ends inside a UTF-8 character).

llama-cpp-python's server runs one request at a time (concurrent requests wait for a lock; it is
started with --interrupt_requests False so that a new request waits instead of cutting the
running one short). exo runs with --exo-parallel slots (default 1, the same one-at-a-time).

Usage: bench/server_vs_llamacpp.py [--threads 2] [--models a,b] [--concurrency 1,8] [--requests 3]
                                   [--max-tokens 128] [--exo PATH] [--out FILE]
Run it with the reference venv's Python (scripts/setup-reference.sh), which has llama-cpp-python
and its server extras. Prints a Markdown table with ratios (throughput exo / llama.cpp; TTFT
llama.cpp / exo, so that > 1 means exo is better) and writes the raw numbers as JSON to --out.
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


def stream_completion(port, model, text, max_tokens):
    """Sends one streamed completion; returns (ttft seconds, generated chunks, total seconds)."""
    body = json.dumps({"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True})
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft, chunks = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choices = json.loads(line[6:]).get("choices") or []
        if choices and choices[0].get("text"):
            chunks += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
    c.close()
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


def run_server(kind, a, path, name, concurrencies, logdir):
    port = free_port()
    ctx = str(a.ctx)
    if kind == "exo":
        cmd = [a.exo, "serve", "-m", f"{name}={path}", "--port", str(port), "-t", str(a.threads), "--ctx-size", ctx,
               "--parallel", str(a.exo_parallel), "--queue-size", "64"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--model_alias", name, "--port", str(port),
               "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads), "--n_ctx", ctx,
               "--interrupt_requests", "False", "--verbose", "False"]
    out = {}
    with Server(kind, cmd, port, os.path.join(logdir, f"{kind}-{name}.log")) as s:
        s.wait_ready()
        stream_completion(port, name, prompt(10_000), a.max_tokens)  # warm-up
        for i, c in enumerate(concurrencies):
            out[c] = measure(port, name, c, a.requests, a.max_tokens, offset=1000 * i)
            print(f"{name} {kind} c={c}: {out[c]['tps']:.1f} tok/s, TTFT {out[c]['ttft_median_s']:.3f} s", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--exo-parallel", type=int, default=1)
    ap.add_argument("--exo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "exo"))
    ap.add_argument("--out", default="bench/results/server_vs_llamacpp.json")
    a = ap.parse_args()
    concurrencies = [int(c) for c in a.concurrency.split(",")]

    import llama_cpp
    logdir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(logdir, exist_ok=True)
    raw = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(), "threads": a.threads,
           "max_tokens": a.max_tokens, "requests_per_client": a.requests, "ctx": a.ctx, "exo_parallel": a.exo_parallel,
           "llama_cpp_python": llama_cpp.__version__, "models": {}}
    for name in a.models.split(","):
        path = os.path.join(models_dir(), name + ".gguf")
        raw["models"][name] = {kind: run_server(kind, a, path, name, concurrencies, logdir) for kind in ("exo", "llama.cpp")}
    print(f"\nthreads={a.threads}, max_tokens={a.max_tokens}, {a.requests} requests per client, exo --parallel {a.exo_parallel}; "
          f"llama-cpp-python {llama_cpp.__version__}; {raw['cpu']}\n")
    print("| model | clients | exo tok/s | llama.cpp tok/s | ratio | exo TTFT s (p50/p90) | llama.cpp TTFT s (p50/p90) | TTFT ratio (llama/exo) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in raw["models"].items():
        for c in concurrencies:
            e, l = r["exo"][c], r["llama.cpp"][c]
            print(f"| {name} | {c} | {e['tps']:.1f} | {l['tps']:.1f} | {e['tps'] / l['tps']:.2f} | "
                  f"{e['ttft_median_s']:.3f} / {e['ttft_p90_s']:.3f} | {l['ttft_median_s']:.3f} / {l['ttft_p90_s']:.3f} | "
                  f"{l['ttft_median_s'] / e['ttft_median_s']:.2f} |")
    with open(a.out, "w") as f:
        json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
