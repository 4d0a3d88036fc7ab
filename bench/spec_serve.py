#!/usr/bin/env python3
"""Speculative decoding in `exo serve`: aggregate tokens/s of concurrent greedy requests with and
without speculation, and the acceptance the server reports.

Five servers run on the same machine and threads, each with a 1 GiB KV cache (a server's
default takes a quarter of the host's memory, on a GPU up to 90% of what is free, which left the
servers started last too little GPU memory for their layers): plain, `--draft DRAFT` and `--spec
ngram` (speculating where the server measures it faster, the default), and both again with
`--spec-always` (every step speculates), each with --parallel equal to the most clients
measured. All five are up at once and measured in turn, --reps rounds of every (clients, server)
pair after --warm-rounds uncounted ones (on a GPU each new call shape is captured as a graph
once), so that a change in the machine's load falls on every server alike; each figure sums the
rounds. For each number of concurrent clients C, C clients each send the prompts below (code, a
code edit, prose; chat format, greedy, --max-tokens each) one after another as non-streamed
`/v1/chat/completions` requests; a warm-up request comes first and is not counted.
- aggregate tokens/s: completion tokens of all requests / wall time from the first request sent
  to the last answer received (prompts included, as serving benchmarks report throughput);
- acceptance: accepted / drafted summed over the answers' `usage.speculation`;
- spec steps: the share of decode steps the server ran speculatively (from /metrics,
  `exo_spec_gate_*_steps_total`, counted over that number of clients' run).
Greedy speculation must answer exactly as the plain server; the script checks that too and
names the answers that differ (on a GPU, verification adds in another order than one-token steps,
so a near-tie may part them; see spec_decode.py), exiting non-zero if any did.

Usage: bench/spec_serve.py [--threads 2] [--concurrency 1,4] [--max-tokens 128] [--reps 1] [--warm-rounds 0]
       [--exo PATH] [--device cpu|cuda] [--target qwen2.5-coder-1.5b-instruct] [--draft qwen2.5-coder-0.5b-instruct]
       [--out FILE]
Prints a Markdown table and writes the raw numbers as JSON to --out.
"""
import argparse
import datetime
import http.client
import json
import os
import subprocess
import sys
import threading
import time

from _machine import cpu_name, save_rows
from _spec_prompts import PROMPTS


def start(exo, target, threads, parallel, device, extra):
    """Starts `exo serve` on a free port and waits until /health answers 200."""
    cmd = [exo, "serve", "-m", target, "--port", "0", "-t", str(threads), "--parallel", str(parallel),
           "--ctx-size", "2048", "--kv-memory", "1GiB", "--device", device, *extra]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if line.startswith("exo serve: listening on http://"):
            addr = line.strip().rsplit("/", 1)[1]
            break
    else:
        sys.exit(f"{' '.join(cmd)} exited before listening")
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    host, port = addr.split(":")
    for _ in range(1200):
        if p.poll() is not None:
            sys.exit(f"{' '.join(cmd)} exited with {p.returncode}")
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p, (host, int(port))
        except OSError:
            pass
        time.sleep(0.1)
    p.kill()
    sys.exit("the server did not become ready")


def ask(addr, model, prompt, max_tokens):
    c = http.client.HTTPConnection(*addr, timeout=3600)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": max_tokens}
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    if r.status != 200:
        sys.exit(f"HTTP {r.status}: {data}")
    return data["choices"][0]["message"]["content"], data["usage"]


def measure(addr, model, clients, max_tokens):
    """Answers per (client, prompt), completion tokens, seconds, drafted and accepted."""
    answers = {}
    lock = threading.Lock()

    def client(i):
        for name, prompt in PROMPTS.items():
            text, usage = ask(addr, model, prompt, max_tokens)
            with lock:
                answers[(i, name)] = (text, usage)

    ask(addr, model, "Hello!", 8)
    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.perf_counter() - t
    tokens = sum(u["completion_tokens"] for _, u in answers.values())
    spec = [u.get("speculation") or {} for _, u in answers.values()]
    return answers, tokens, secs, sum(s.get("drafted", 0) for s in spec), sum(s.get("accepted", 0) for s in spec)


def gate_steps(addr):
    """(speculative, plain) decode steps the server's speculation gate has run so far."""
    c = http.client.HTTPConnection(*addr, timeout=60)
    c.request("GET", "/metrics")
    steps = {"speculative": 0.0, "plain": 0.0}
    for line in c.getresponse().read().decode().splitlines():
        for kind in steps:
            if line.startswith(f"exo_spec_gate_{kind}_steps_total{{"):
                steps[kind] += float(line.rsplit(" ", 1)[1])
    return steps["speculative"], steps["plain"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--warm-rounds", type=int, default=0, help="rounds run first and not counted")
    ap.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--exo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "exo"))
    ap.add_argument("--device", default="cpu", help="exo's --device: cpu, cuda or cuda:N")
    ap.add_argument("--out", default="bench/results/spec_serve.json")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    modes = [("plain", []), ("draft", ["--draft", a.draft]), ("ngram", ["--spec", "ngram"]),
             ("draft, always", ["--draft", a.draft, "--spec-always"]), ("ngram, always", ["--spec", "ngram", "--spec-always"])]
    servers = {}
    try:
        for mode, extra in modes:
            servers[mode] = start(a.exo, a.target, a.threads, max(levels), a.device, extra)
        # Per (mode, clients): tokens, seconds, drafted, accepted, speculative and plain steps.
        totals = {(mode, c): [0, 0.0, 0, 0, 0.0, 0.0] for mode, _ in modes for c in levels}
        plain_answers = {}
        differ = set()
        for rep in range(a.warm_rounds + a.reps):
            for c in levels:
                for mode, _ in modes:
                    addr = servers[mode][1]
                    before = gate_steps(addr)
                    answers, tokens, secs, drafted, accepted = measure(addr, a.target, c, a.max_tokens)
                    after = gate_steps(addr)
                    if mode == "plain":
                        plain_answers[c] = answers
                    for key, (text, _) in answers.items():
                        if text != plain_answers[c][key][0]:
                            differ.add(f"{mode}, {c} clients, {key}")
                    if rep < a.warm_rounds:
                        continue
                    t = totals[(mode, c)]
                    for i, v in enumerate([tokens, secs, drafted, accepted, after[0] - before[0], after[1] - before[1]]):
                        t[i] += v
    finally:
        for server, _ in servers.values():
            server.kill()
            server.wait()
    rows = []
    for c in levels:
        plain_tokens, plain_secs = totals[("plain", c)][:2]
        for mode, _ in modes:
            tokens, secs, drafted, accepted, spec, plain = totals[(mode, c)]
            rows.append({
                "mode": mode, "clients": c, "tokens": tokens, "seconds": secs, "tps": tokens / secs,
                "speedup": (tokens / secs) / (plain_tokens / plain_secs), "drafted": drafted, "accepted": accepted,
                "acceptance": accepted / drafted if drafted else None, "spec_steps": spec / (spec + plain) if spec + plain else None,
            })
    print(f"machine: {cpu_name()}, device {a.device}, threads {a.threads}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"target {a.target}, draft {a.draft}, {a.max_tokens} greedy tokens max per request, {len(PROMPTS)} prompts per client, "
          f"{a.reps} round(s) after {a.warm_rounds} uncounted")
    print("| clients | mode | tokens | seconds | aggregate t/s | vs plain | drafted | accepted | acceptance | spec steps |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
        share = f"{100 * r['spec_steps']:.0f}%" if r["spec_steps"] is not None else "-"
        print(f"| {r['clients']} | {r['mode']} | {r['tokens']} | {r['seconds']:.1f} | {r['tps']:.2f} | {r['speedup']:.2f}x | "
              f"{r['drafted']} | {r['accepted']} | {acc} | {share} |")
    save_rows(a.out, a.threads, rows)
    if differ:
        sys.exit("answers differ from the plain server's: " + "; ".join(sorted(differ)))


if __name__ == "__main__":
    main()
