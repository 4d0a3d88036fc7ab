#!/bin/sh
# On a GPU machine, from the folder tests/gpu/pack.sh filled: GPU-vs-CPU forward check
# (crates/exo-models/tests/cuda_matches_cpu.rs) on random-weight models of real shapes (a
# Qwen2.5-1.5B-shaped Q4_K_M, a small llama with every GPU weight type, and a small Gemma 3 with
# 256-wide heads, q/k and post norms and a 32-token sliding window), plus any GGUF files given as
# arguments (real models).
#
#   sh .gpu/check.sh [MODEL.gguf ...]
#
# Reference: the CPU path on dequantized f32 weights; see the test's doc for the tolerances.
# Seen 2026-11-27 on an H200 (against the CPU's quantized path then): the Qwen2.5-1.5B shape and
# single-type llamas of Q4_0, Q4_1, Q5_0, Q5_1, Q5_K and F16 agreed to 1e-4..7e-3; all-Q8_0 and
# all-Q6_K llamas were 2-9% apart. The CPU's own quantized path is that far from the dequantized
# reference on those files (2.1% and 6.1%; 0.01% on all-Q5_K): random weights of those types
# amplify the int8 rounding of activations that both quantized paths do.
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
for shape in llama-mixed qwen2.5-1.5b-q4_k_m gemma3-mixed; do
  [ -f "$work/$shape.gguf" ] || python3 "$here/gguf_random.py" model --tokenizer "$here/tok.gguf" --shape "$shape" --out "$work/$shape.gguf"
  models="$models,$work/$shape.gguf"
done
# TYPES="q8_0 q5_k ...": also a small llama per listed type with every matrix of that type.
for ty in ${TYPES:-}; do
  [ -f "$work/llama-$ty.gguf" ] || python3 "$here/gguf_random.py" model --tokenizer "$here/tok.gguf" --shape llama-mixed --types "$ty" --out "$work/llama-$ty.gguf"
  models="$models,$work/llama-$ty.gguf"
done
for m in "$@"; do models="$models,$m"; done
# The whole output also goes to $OUT/check.log (or $WORK's): a device call cut off at its time
# limit still brings back what $OUT holds. TESTS narrows the run to tests whose names contain it.
log="${OUT:-$work}/check.log"
set +e
EXO_GPU_MODELS=${models#,} "$work/cuda_matches_cpu" --nocapture --test-threads 1 ${TESTS:-} > "$log" 2>&1
rc=$?
cat "$log"
exit $rc
