#!/usr/bin/env python3
"""exo vs llama.cpp, batched: B sequences prefilled and decoded together, on CPU, in one run.

`exo bench --parallel` against llama.cpp's own `llama-batched-bench` (built from the same
llama.cpp source the reference venv runs, by bench/build-llama-server.sh llama-batched-bench),
same GGUF, same thread count, f16 KV cache in both, one after the other. Both tools measure the
same thing: B prompts of p random tokens processed together (S_PP, prompt tokens/s over all
sequences), then n steps that each decode one token of every sequence in one call (S_TG,
generated tokens/s over all sequences). llama-batched-bench runs each B once per process, so it
runs `--reps` times here and its figures are averaged like exo's; its -c is the total KV size,
B·(p+n) for the largest B. llama.cpp runs with flash attention off and on (`--fa`).

Usage: bench/batched_vs_llamacpp.py [--model qwen2.5-coder-0.5b-instruct] [-p 128] [-n 32]
           [--parallel 1,4] [--threads 2] [--reps 3] [--fa off,on] [--exo PATH]
Prints a Markdown table with exo / llama.cpp ratios and writes the raw figures as JSON to --out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from _machine import cpu_name, save_rows

HERE = os.path.dirname(os.path.abspath(__file__))


def models_dir():
    return os.path.join(os.environ.get("EXO_HOME", os.path.expanduser("~/.exo")), "models")


def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def exo_rows(a, path):
    out = subprocess.run([a.exo, "bench", path, "--parallel", a.parallel, "-p", str(a.n_prompt), "-n", str(a.n_gen),
                          "-t", str(a.threads), "-r", str(a.reps), "--json"], check=True, capture_output=True, text=True).stdout
    return {r["b"]: {"s_pp": (r["s_pp"], r["s_pp_sd"]), "s_tg": (r["s_tg"], r["s_tg_sd"]), "s": (r["s"], r["s_sd"])}
            for r in json.loads(out)["parallel"]}


def llama_rows(a, path, tool, fa):
    n_kv = max(int(b) for b in a.parallel.split(",")) * (a.n_prompt + a.n_gen)
    runs = {}
    for _ in range(a.reps):
        p = subprocess.run([tool, "-m", path, "-c", str(n_kv), "-npp", str(a.n_prompt), "-ntg", str(a.n_gen), "-npl", a.parallel,
                            "-t", str(a.threads), "-tb", str(a.threads), "-fa", fa, "--output-format", "jsonl"],
                           check=True, capture_output=True, text=True)
        for line in (p.stdout + p.stderr).splitlines():
            if line.startswith('{"n_kv_max"'):
                r = json.loads(line)
                runs.setdefault(r["pl"], []).append(r)
    missing = [b for b in a.parallel.split(",") if int(b) not in runs]
    if missing:
        raise RuntimeError(f"llama-batched-bench -fa {fa} reported no row for B = {','.join(missing)}")
    return {b: {k: mean_sd([r[f] for r in rs]) for k, f in [("s_pp", "speed_pp"), ("s_tg", "speed_tg"), ("s", "speed")]}
            for b, rs in runs.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("--parallel", default="1,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fa", default="off,on")
    ap.add_argument("--exo", default=os.path.join(HERE, "..", "exo"))
    ap.add_argument("--out", default="bench/results/batched_vs_llamacpp.json")
    a = ap.parse_args()

    path = a.model if os.path.isfile(a.model) else os.path.join(models_dir(), a.model + ".gguf")
    tool = subprocess.run([os.path.join(HERE, "build-llama-server.sh"), "llama-batched-bench"], check=True,
                          capture_output=True, text=True).stdout.strip()
    exo = exo_rows(a, path)
    print("exo: done", file=sys.stderr)
    peers = {fa: llama_rows(a, path, tool, fa) for fa in a.fa.split(",")}
    print("llama.cpp: done", file=sys.stderr)

    print(f"\n{os.path.basename(path)}, PP {a.n_prompt}, TG {a.n_gen}, threads={a.threads}, reps={a.reps}, f16 KV; {cpu_name()}\n")
    print("| B | engine | S_PP t/s | S_TG t/s | S t/s | exo/peer S_PP | exo/peer S_TG | exo/peer S |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    setup = {"model": os.path.basename(path), "pp": a.n_prompt, "tg": a.n_gen, "reps": a.reps}
    fmt = lambda ms: f"{ms[0]:.1f} ± {ms[1]:.1f}"
    for b in sorted(exo):
        e = exo[b]
        print(f"| {b} | exo | {fmt(e['s_pp'])} | {fmt(e['s_tg'])} | {fmt(e['s'])} | | | |")
        rows.append({**setup, "b": b, "engine": "exo", **e})
        for fa, peer in peers.items():
            l = peer[b]
            ratios = " | ".join(f"{e[k][0] / l[k][0]:.2f}" for k in ("s_pp", "s_tg", "s"))
            print(f"| {b} | llama.cpp -fa {fa} | {fmt(l['s_pp'])} | {fmt(l['s_tg'])} | {fmt(l['s'])} | {ratios} |")
            rows.append({**setup, "b": b, "engine": f"llama.cpp -fa {fa}", **l})
    save_rows(a.out, a.threads, rows)


if __name__ == "__main__":
    main()
