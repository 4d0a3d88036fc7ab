#!/bin/sh
# On a GPU machine, from the folder tests/gpu/pack.sh filled: GPU-vs-CPU forward check
# (crates/exo-models/tests/cuda_matches_cpu.rs) on random-weight models of real shapes (a
# Qwen2.5-1.5B-shaped Q4_K_M and a small llama with every GPU weight type), plus any GGUF files
# given as arguments (real models).
#
#   sh .gpu/check.sh [MODEL.gguf ...]
#
# Seen 2026-11-27 on an H200: the Qwen2.5-1.5B shape and single-type llamas of Q4_0, Q4_1, Q5_0,
# Q5_1, Q5_K and F16 agree (relative logit error 1e-4 to 7e-3; greedy tokens equal, or apart only
# after a CPU near-tie). All-Q8_0 and all-Q6_K llamas, and so llama-mixed, differ from the CPU by
# 2-9% in both GPU paths alike (f16 GEMM prefill and int8 mat-vec decode), so the test fails there:
# not yet explained (the GPU decoders match the gguf package exactly: tests/gpu/blocks/check.py);
# next step: the CPU's own quantized vs dequantized logits on those files.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/exo-gpu}
mkdir -p "$work"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
[ -x "$work/exo" ] || { xz -dc "$here/exo.xz" > "$work/exo"; chmod +x "$work/exo"; }
[ -x "$work/cuda_matches_cpu" ] || { xz -dc "$here/cuda_matches_cpu.xz" > "$work/cuda_matches_cpu"; chmod +x "$work/cuda_matches_cpu"; }
python3 -c 'import gguf' 2>/dev/null || { python3 -m pip install -q --no-index --no-deps --target "$work/site" "$here"/gguf-*.whl; }
export PYTHONPATH="$work/site:${PYTHONPATH:-}"
models=""
for shape in llama-mixed qwen2.5-1.5b-q4_k_m; do
  [ -f "$work/$shape.gguf" ] || python3 "$here/gguf_random.py" model --tokenizer "$here/tok.gguf" --shape "$shape" --out "$work/$shape.gguf"
  models="$models,$work/$shape.gguf"
done
# TYPES="q8_0 q5_k ...": also a small llama per listed type with every matrix of that type.
for ty in ${TYPES:-}; do
  [ -f "$work/llama-$ty.gguf" ] || python3 "$here/gguf_random.py" model --tokenizer "$here/tok.gguf" --shape llama-mixed --types "$ty" --out "$work/llama-$ty.gguf"
  models="$models,$work/llama-$ty.gguf"
done
for m in "$@"; do models="$models,$m"; done
EXO_GPU_MODELS=${models#,} "$work/cuda_matches_cpu" --nocapture --test-threads 1
