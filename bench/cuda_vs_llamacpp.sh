#!/bin/sh
# exo on the GPU against llama.cpp (CUDA, sm_90) on the same random-weight Llama-3-8B-shaped
# Q4_K_M GGUF, in one run on one machine. From the folder tests/gpu/pack.sh filled:
#
#   sh .gpu/cuda_vs_llamacpp.sh [REAL.gguf ...]     (about 9 minutes: llama.cpp builds for ~5)
#
# Prints llama-bench-style pp512 / tg128 figures for exo, llama.cpp and llama.cpp with flash
# attention, with exo / peer ratios, for the random model and any GGUF files given; then the peak
# GPU memory of each engine holding an 8K context of the random model (nvidia-smi's per-process
# figure, sampled every 50 ms; f16 KV cache in both); then batched decode of the random model,
# `exo bench --parallel 8,32` (also with `--gpu-f16-weights`) against `llama-batched-bench -npl
# 8,32` (prompt 512 and 128 generated tokens per sequence, flash attention off and on; PAR_REPS
# repetitions of exo, 2 by default, each llama-batched-bench figure one run as that tool
# measures). JSON and logs go to $OUT (or /tmp/exo-gpu).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/exo-gpu}
out=${OUT:-$work}
mkdir -p "$work" "$out"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
[ -x "$work/exo" ] || { xz -dc "$here/exo.xz" > "$work/exo"; chmod +x "$work/exo"; }
python3 -c 'import gguf' 2>/dev/null || { python3 -m pip install -q --no-index --no-deps --target "$work/site" "$here"/gguf-*.whl; }
export PYTHONPATH="$work/site:${PYTHONPATH:-}"
REPS=${REPS:-3}

# llama.cpp builds in the background while the model is written.
if [ ! -x "$work/llama.cpp/b/bin/llama-bench" ] || [ ! -x "$work/llama.cpp/b/bin/llama-batched-bench" ]; then
  tar -xJf "$here/llama.cpp.tar.xz" -C "$work"
  (cd "$work/llama.cpp" && cmake -S . -B b -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release >"$out/llama-build.log" 2>&1 && ninja -C b -j16 llama-bench llama-batched-bench >>"$out/llama-build.log" 2>&1) &
  build=$!
else
  build=""
fi
model="$work/llama3-8b-q4_k_m.gguf"
[ -f "$model" ] || python3 "$here/gguf_random.py" model --tokenizer "$here/tok.gguf" --shape llama3-8b-q4_k_m --out "$model"
[ -z "$build" ] || wait "$build" || { tail -30 "$out/llama-build.log"; exit 1; }

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
llama_bench="$work/llama.cpp/b/bin/llama-bench"
i=0
for m in "$model" "$@"; do
  "$work/exo" bench "$m" --device cuda -p 512 -n 128 -r "$REPS" --json > "$out/exo-$i.json"
  for fa in 0 1; do
    "$llama_bench" -m "$m" -ngl 99 -fa $fa -p 512 -n 128 -r "$REPS" -o json > "$out/llama-$i-fa$fa.json"
  done
  python3 - "$out" "$m" "$i" <<'PY'
import json, os, sys
out, model, i = sys.argv[1], sys.argv[2], sys.argv[3]
exo = json.load(open(f"{out}/exo-{i}.json"))
def peer(fa):
    rows = json.load(open(f"{out}/llama-{i}-fa{fa}.json"))
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    return pp, tg
size = os.path.getsize(model)
print(f"\nmodel: {model} ({size / 2**30:.2f} GiB), GPU: {open(out + '/gpu.txt').read().strip()}")
print("| engine | pp512 t/s | tg128 t/s | exo/peer pp | exo/peer tg |")
print("|---|---:|---:|---:|---:|")
print(f"| exo --device cuda | {exo['pp_tps']:.0f} ± {exo['pp_tps_sd']:.0f} | {exo['tg_tps']:.1f} ± {exo['tg_tps_sd']:.1f} | | |")
for fa in (0, 1):
    pp, tg = peer(fa)
    print(f"| llama.cpp{' -fa 1' if fa else ''} | {pp:.0f} | {tg:.1f} | {exo['pp_tps'] / pp:.2f} | {exo['tg_tps'] / tg:.2f} |")
print(f"exo tg128 reads {exo['weight_bytes'] / 1e9:.2f} GB of weights per token: {exo['tg_tps'] * exo['weight_bytes'] / 1e12:.2f} TB/s")
PY
  i=$((i + 1))
done

# Peak GPU memory of a process running CMD..., in MiB.
peak_mib() {
  log=$1
  shift
  nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits -lms 50 > "$log" 2>/dev/null &
  mon=$!
  status=0
  "$@" > /dev/null 2>&1 || status=$?
  kill $mon
  wait $mon 2>/dev/null || true
  [ $status -eq 0 ] || { echo "failed ($status): $*" >&2; return 1; }
  sort -n "$log" | tail -1
}
# An 8K context: exo's KV cache sized for 8192 tokens; llama-bench's context is depth + p + n.
exo_mem=$(peak_mib "$out/mem-exo.txt" "$work/exo" bench "$model" --device cuda -p 512 -n 16 -r 1 -c 8192) || exo_mem=failed
echo "| engine, 8192-token context | peak GPU memory MiB |"
echo "|---|---:|"
echo "| exo --device cuda | $exo_mem |"
for fa in 0 1; do
  mem=$(peak_mib "$out/mem-llama-fa$fa.txt" "$llama_bench" -m "$model" -ngl 99 -fa $fa -p 512 -n 16 -r 1 -d 7664) || mem=failed
  echo "| llama.cpp -fa $fa | $mem |"
done

# Batched decode: B sequences of 512 prompt tokens, then 128 steps of one token each, every
# sequence in each step (llama-batched-bench's default pattern). Its -c is the whole KV cache,
# B·(512+128) tokens for the largest B; a smaller one silently skips that B.
# The timeout bounds a build whose batched forward pass does not run on the GPU (the CPU of the
# host would take many minutes over 32 x 512 prompt tokens of an 8B model).
PAR_REPS=${PAR_REPS:-2}
timeout "${PAR_TIMEOUT:-240}" "$work/exo" bench "$model" --device cuda --parallel 8,32 -p 512 -n 128 -r "$PAR_REPS" --json > "$out/exo-parallel.json" \
  || echo "exo bench --parallel failed (exit $?; 124: it ran past PAR_TIMEOUT)" >&2
# Again with the weights kept widened to f16 (2 more bytes per weight): steps of more than 16
# tokens then read them instead of widening them every call.
timeout "${PAR_TIMEOUT:-240}" "$work/exo" bench "$model" --device cuda --gpu-f16-weights --parallel 8,32 -p 512 -n 128 -r "$PAR_REPS" --json > "$out/exo-parallel-f16.json" \
  || echo "exo bench --gpu-f16-weights --parallel failed (exit $?)" >&2
for fa in 0 1; do
  "$work/llama.cpp/b/bin/llama-batched-bench" -m "$model" -ngl 99 -fa $fa -c 20480 -npp 512 -ntg 128 -npl 8,32 \
    --output-format jsonl > "$out/llama-parallel-fa$fa.jsonl" 2> "$out/llama-parallel-fa$fa.log" \
    || echo "llama-batched-bench -fa $fa failed (exit $?)" >&2
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def rows(path, parse):
    try:
        return parse(open(path).read())
    except (OSError, ValueError, KeyError) as e:
        print(f"{path}: {e}")
        return {}
by_b = lambda t: {r["b"]: r for r in json.loads(t)["parallel"]}
engines = [("exo --device cuda", rows(f"{out}/exo-parallel.json", by_b)),
           ("exo --gpu-f16-weights", rows(f"{out}/exo-parallel-f16.json", by_b))]
peer = {fa: rows(f"{out}/llama-parallel-fa{fa}.jsonl",
                 lambda t: {r["pl"]: {"s_pp": r["speed_pp"], "s_tg": r["speed_tg"], "s": r["speed"]}
                            for r in map(json.loads, (l for l in t.splitlines() if l.startswith("{")))})
        for fa in (0, 1)}
print("\n| B | engine | S_PP t/s | S_TG t/s | S t/s | exo/peer S_TG (fa 0 / fa 1) |")
print("|---:|---|---:|---:|---:|---:|")
for b in (8, 32):
    for name, exo in engines:
        e = exo.get(b)
        if e:
            ratios = " / ".join(f"{e['s_tg'] / peer[fa][b]['s_tg']:.2f}" if b in peer[fa] else "-" for fa in (0, 1))
            print(f"| {b} | {name} | {e['s_pp']:.0f} ± {e['s_pp_sd']:.0f} | {e['s_tg']:.1f} ± {e['s_tg_sd']:.1f} | {e['s']:.0f} | {ratios} |")
    for fa in (0, 1):
        p = peer[fa].get(b)
        if p:
            print(f"| {b} | llama.cpp -fa {fa} | {p['s_pp']:.0f} | {p['s_tg']:.1f} | {p['s']:.0f} | |")
PY
