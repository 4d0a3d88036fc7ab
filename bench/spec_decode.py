#!/usr/bin/env python3
"""Speculative decoding on CPU: tokens/s with and without speculation, acceptance, and the bound.

For each prompt (code and prose, chat-formatted), greedy decoding of the same number of tokens:
- plain: `exo run TARGET PROMPT --temperature 0 -n N --verbose`
- draft: the same with `--draft DRAFT`
- ngram: the same with `--spec ngram`
Greedy speculation must reproduce the plain text exactly; the script checks that too.

The bound: with per-token acceptance a, k tokens drafted per step and c the draft's cost per
token relative to the target's (measured here as plain target tokens/s over plain draft
tokens/s), one step costs k c + 1 target passes and yields (1 - a^(k+1)) / (1 - a) tokens, so
speculation can at best be (1 - a^(k+1)) / ((1 - a) (k c + 1)) times faster (Leviathan et al.
2023). On a CPU a pass over k + 1 tokens costs more than a pass over one; the script measures
that ratio v = time(k + 1 tokens) / time(1 token) with `exo bench -p` and also prints the bound
with the verification priced in, (1 - a^(k+1)) / ((1 - a) (k c + v)).

On a GPU (`--device cuda`, with an exo built with the cuda feature; tests/gpu/pack.sh packs this
script) the same runs measure speculation there, where issue 8 asks for 2x over plain decoding.
exo decodes plainly while it measures speculation slower (its gate); `--spec-always` passes that
flag on to measure every step speculated.

Usage: bench/spec_decode.py [--threads 2] [--n-gen 128] [--exo PATH] [--device cpu|cuda]
       [--spec-always] [--target qwen2.5-coder-1.5b-instruct] [--draft qwen2.5-coder-0.5b-instruct]
Prints a Markdown table and writes the raw numbers as JSON to --out.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys

from _machine import cpu_name, save_rows
from _spec_prompts import PROMPTS


GEN = re.compile(r"generated (\d+) tokens ([\d.]+) tok/s")
SPEC = re.compile(r"\[speculation: drafted (\d+) tokens, accepted (\d+) \([\d.]+%\) in (\d+) verification passes\]")


def run(exo, model, prompt, n_gen, threads, extra, device):
    cmd = [exo, "run", model, prompt, "--temperature", "0", "-n", str(n_gen), "-t", str(threads), "--device", device,
           "--verbose", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    g = GEN.search(p.stderr)
    s = SPEC.search(p.stderr)
    # A run whose gate kept every step plain reports no speculation line.
    out = {"text": p.stdout, "tokens": int(g.group(1)), "tps": float(g.group(2)), "drafted": 0, "accepted": 0, "steps": 0}
    if s:
        out.update(drafted=int(s.group(1)), accepted=int(s.group(2)), steps=int(s.group(3)))
    return out


def same_text(r):
    return "yes" if r["identical"] else f"no: first {r['same_chars']} of {r['plain_chars']} chars"


def bound(a, k, c, v=1.0):
    if k <= 0:
        return 1.0
    tokens = k + 1 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)
    return tokens / (k * c + v)


def pass_seconds(exo, model, tokens, threads, device):
    """Seconds of one forward pass over `tokens` tokens (exo bench's prompt test)."""
    p = subprocess.run([exo, "bench", model, "-p", str(tokens), "-n", "0", "-r", "3", "-t", str(threads), "--device",
                        device, "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"exo bench failed:\n{p.stderr}")
    return tokens / json.loads(p.stdout)["pp_tps"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--exo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "exo"))
    ap.add_argument("--out", default="bench/results/spec_decode.json")
    ap.add_argument("--device", default="cpu", help="exo's --device: cpu, cuda or cuda:N")
    ap.add_argument("--spec-always", action="store_true", help="pass --spec-always: speculate on every step")
    a = ap.parse_args()
    always = ["--spec-always"] if a.spec_always else []

    rows = []
    pass_cost = {}
    for name, prompt in PROMPTS.items():
        plain = run(a.exo, a.target, prompt, a.n_gen, a.threads, [], a.device)
        draft_alone = run(a.exo, a.draft, prompt, a.n_gen, a.threads, [], a.device)
        c = plain["tps"] / draft_alone["tps"]
        for mode, extra in [("draft", ["--draft", a.draft]), ("ngram", ["--spec", "ngram"])]:
            r = run(a.exo, a.target, prompt, a.n_gen, a.threads, extra + always, a.device)
            # Kept going on a difference, so that one run shows every prompt's figures; the
            # column and the exit status report it.
            same = os.path.commonprefix([r["text"], plain["text"]])
            identical = r["text"] == plain["text"]
            acc = r["accepted"] / r["drafted"] if r["drafted"] else 0.0
            k = r["drafted"] / r["steps"] if r["steps"] else 0.0
            # Per-token acceptance a of the geometric model, from the mean accepted run length
            # per step m = a (1 - a^k) / (1 - a): solved by bisection.
            m = r["accepted"] / r["steps"] if r["steps"] else 0.0
            lo, hi = 0.0, 1.0
            for _ in range(60):
                mid = (lo + hi) / 2
                run_len = sum(mid ** i for i in range(1, int(round(k)) + 1))
                lo, hi = (mid, hi) if run_len < m else (lo, mid)
            a_tok = lo
            cost = c if mode == "draft" else 0.0
            width = max(1, int(round(k))) + 1
            for t in (1, width):
                if t not in pass_cost:
                    pass_cost[t] = pass_seconds(a.exo, a.target, t, a.threads, a.device)
            v = pass_cost[width] / pass_cost[1]
            rows.append({
                "prompt": name, "mode": mode, "tokens": r["tokens"], "plain_tps": plain["tps"], "spec_tps": r["tps"],
                "speedup": r["tps"] / plain["tps"], "drafted": r["drafted"], "accepted": r["accepted"],
                "acceptance": acc, "mean_draft": k, "per_token_a": a_tok, "cost_ratio_c": cost,
                "bound": bound(a_tok, k, cost), "verify_ratio_v": v, "bound_cpu": bound(a_tok, k, cost, v),
                "draft_alone_tps": draft_alone["tps"], "identical": identical,
                "same_chars": len(same), "plain_chars": len(plain["text"]),
            })

    print(f"machine: {cpu_name()}, device {a.device}, threads {a.threads}, {datetime.date.today()}, target {a.target}, "
          f"draft {a.draft}, {a.n_gen} greedy tokens{', --spec-always' if a.spec_always else ''}")
    print("| prompt | mode | plain t/s | spec t/s | speedup | drafted | accepted | acceptance | mean k | a | c | bound "
          "| v | bound with v | same text |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['prompt']} | {r['mode']} | {r['plain_tps']:.2f} | {r['spec_tps']:.2f} | {r['speedup']:.2f}x | "
              f"{r['drafted']} | {r['accepted']} | {r['acceptance']:.2f} | {r['mean_draft']:.1f} | "
              f"{r['per_token_a']:.2f} | {r['cost_ratio_c']:.2f} | {r['bound']:.2f}x | {r['verify_ratio_v']:.2f} | "
              f"{r['bound_cpu']:.2f}x | {same_text(r)} |")
    save_rows(a.out, a.threads, rows)
    differ = [f"{r['prompt']}/{r['mode']}" for r in rows if not r["identical"]]
    if differ:
        sys.exit(f"greedy output differs from plain decoding: {', '.join(differ)}")


if __name__ == "__main__":
    main()
