#!/usr/bin/env python3
"""Quantization quality (issue 7): uniform formats (exo's and llama.cpp's) and exo's adaptive mix,
scored against the float base by one program.

For each model: the float base is the PyPI model dequantized (`exo quantize MODEL --type f32`;
the PyPI files are already quantized, so this is the best float model there is). From that base:
- exo uniform: `exo quantize BASE --type T` for q4_K and q6_K, and q4_K with `--imatrix` (scales
  chosen on the calibration text's activations, as llama.cpp's --imatrix);
- llama.cpp uniform: `llama_model_quantize` from llama-cpp-python on the same f32 base (Q3_K_M,
  Q4_K_M, Q6_K and a pure Q4_K; no importance matrix, llama.cpp's default);
- exo adaptive: `exo quantize BASE --target-bpw X` for X in 3.5, 4.5, 6, and `--max-size` of
  llama.cpp's Q4_K_M file.
Every file is scored by `exo perplexity FILE -f TEXT --ctx N --kld-base BASE`. Bits per weight are
issue 7's: file bits over the number of weights in the file (embeddings and output included).

Usage: bench/quant_quality.py [--models a,b] [--text FILE] [--ctx 128] [--work DIR] [--exo PATH]
                              [--bpw 3.5 4.5 6] [--files NAME,...] [--base-type f16] [--delete]
--files keeps only the named files (their names without .gguf: llama-Q3_K_M, llama-Q4_K_M,
llama-Q6_K, llama-Q4_K.pure, exo-q4_K, exo-q4_K-imatrix, exo-q6_K, exo-adaptive-q4km,
exo-adaptive-BPW), for a large model on a slow machine.
Prints a Markdown table per model and writes the raw figures as JSON to --out. Run with the
reference venv's Python (~/.cache/exo-dev/venv: llama-cpp-python, gguf).
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

import gguf
import llama_cpp

from _machine import cpu_name

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA_FTYPES = {"Q3_K_M": 12, "Q4_K_M": 15, "Q6_K": 18, "Q4_K (pure)": 14}


def models_dir():
    return os.path.join(os.environ.get("EXO_HOME", os.path.expanduser("~/.exo")), "models")


def run(cmd):
    """Runs `cmd`, returning (stdout+stderr, seconds); fails loudly with the output."""
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr, time.monotonic() - t


def n_weights(path):
    return sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors)


def llama_quantize(base, out, ftype, pure):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = pure
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(base.encode(), out.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize {base} -> {out} (ftype {ftype}) failed: {rc}")


def score(exo, path, base, text, ctx):
    out, _ = run([exo, "perplexity", path, "-f", text, "--ctx", str(ctx), "--kld-base", base])
    num = lambda pat: float(re.search(pat, out).group(1))
    return {"ppl": num(r"Final estimate: PPL = ([0-9.]+)"), "base_ppl": num(r"Base PPL = ([0-9.]+)"),
            "kld": num(r"Mean KLD = ([0-9.]+)"), "top1": num(r"Same top token = ([0-9.]+)")}


def bench_model(exo, name, args):
    src = os.path.join(models_dir(), name + ".gguf")
    work = os.path.join(args.work, name)
    os.makedirs(work, exist_ok=True)
    f = lambda n: os.path.join(work, n)
    base = f(f"base-{args.base_type}.gguf")
    if not os.path.exists(base):
        run([exo, "quantize", src, base, "--type", args.base_type])
    weights = n_weights(base)
    rows = []
    wanted = lambda fname: args.files is None or fname[: -len(".gguf")] in args.files

    def add(label, path, secs):
        """Scores the file at `path` (then removes it with --delete)."""
        r = score(exo, path, base, args.text, args.ctx)
        r.update(file=label, bpw=os.path.getsize(path) * 8 / weights, seconds=secs)
        rows.append(r)
        print(f"  {label}: {r}", file=sys.stderr, flush=True)
        if args.delete:
            os.remove(path)

    def exo_file(label, fname, extra):
        if not wanted(fname):
            return
        path = f(fname)
        secs = None
        if not os.path.exists(path):
            _, secs = run([exo, "quantize", base, path] + extra)
        add(label, path, secs)

    q4km = None
    for label, ftype in LLAMA_FTYPES.items():
        path = f("llama-" + label.split()[0] + (".pure" if "pure" in label else "") + ".gguf")
        if not wanted(os.path.basename(path)) and label != "Q4_K_M":
            continue
        if not os.path.exists(path):
            llama_quantize(base, path, ftype, "pure" in label)
        if label == "Q4_K_M":
            q4km = os.path.getsize(path)
        if wanted(os.path.basename(path)):
            add("llama.cpp " + label, path, None)
    exo_file("exo uniform Q4_K", "exo-q4_K.gguf", ["--type", "q4_K"])
    exo_file(f"exo adaptive, --max-size {q4km} (llama.cpp Q4_K_M's size)", "exo-adaptive-q4km.gguf", ["--max-size", str(q4km)])
    exo_file("exo uniform Q4_K --imatrix", "exo-q4_K-imatrix.gguf", ["--type", "q4_K", "--imatrix"])
    exo_file("exo uniform Q6_K", "exo-q6_K.gguf", ["--type", "q6_K"])
    for bpw in args.bpw:
        try:
            exo_file(f"exo adaptive, --target-bpw {bpw}", f"exo-adaptive-{bpw}.gguf", ["--target-bpw", str(bpw)])
        except SystemExit as e:
            reason = str(e).strip().splitlines()[-1]
            rows.append({"file": f"exo adaptive, --target-bpw {bpw}: not reachable ({reason})"})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--text", default=os.path.join(HERE, "../tests/fixtures/perplexity/lighthouse.txt"))
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--bpw", type=float, nargs="*", default=[3.5, 4.5, 6.0])
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "exo-quant-quality"))
    ap.add_argument("--exo", default=os.path.join(HERE, "..", "exo"))
    ap.add_argument("--out", default="quant_quality.json")
    ap.add_argument("--files", type=lambda v: v.split(","), default=None)
    ap.add_argument("--base-type", default="f32", choices=["f32", "f16"],
                    help="the float base's storage (f16 halves a large model's disk use)")
    ap.add_argument("--delete", action="store_true", help="remove each quantized file once scored")
    args = ap.parse_args()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"), "machine": cpu_name(),
              "text": args.text, "ctx": args.ctx, "models": {}}
    for name in args.models.split(","):
        rows = bench_model(args.exo, name, args)
        result["models"][name] = rows
        base_ppl = next((r["base_ppl"] for r in rows if "base_ppl" in r), float("nan"))
        print(f"\n### {name} (float base PPL {base_ppl:.3f}; {args.text}, ctx {args.ctx})\n")
        print("| file | bits/weight | PPL | mean KLD | same top token | seconds to make |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            if "kld" not in r:
                print(f"| {r['file']} | | | | | |")
                continue
            secs = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
            print(f"| {r['file']} | {r['bpw']:.3f} | {r['ppl']:.3f} | {r['kld']:.4f} | {r['top1']:.1f} % | {secs} |")
        sys.stdout.flush()
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
