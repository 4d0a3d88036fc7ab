#!/bin/sh
# A/B of exo builds (or settings) on one GPU machine, on the random Llama-3-8B-shaped Q4_K_M GGUF
# that cuda_vs_llamacpp.sh uses. From the folder tests/gpu/pack.sh filled:
#
#   sh .gpu/cuda_ab.sh base=BASE.xz new=.gpu/exo.xz f16=.gpu/exo.xz@--gpu-f16-weights ...
#
# Each argument is NAME=BINARY.xz, optionally :VAR=VALUE for an environment setting of that run
# and @FLAG[,FLAG...] for extra `exo bench` flags.
# Prints, for ROUNDS rounds (default 2) alternating over the variants so that drift hits all
# alike, `exo bench -p 512 -n 128 -r 3` (pp512, tg128), then `exo bench --parallel 8,32` once per
# variant when PARALLEL=1 (the default), and with SAMPLING=1 `exo run` sampling and greedy.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/exo-gpu}
mkdir -p "$work/ab"
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
python3 -c 'import gguf' 2>/dev/null || { python3 -m pip install -q --no-index --no-deps --target "$work/site" "$here"/gguf-*.whl; }
export PYTHONPATH="$work/site:${PYTHONPATH:-}"
model="$work/llama3-8b-q4_k_m.gguf"
[ -f "$model" ] || python3 "$here/gguf_random.py" model --tokenizer "$here/tok.gguf" --shape llama3-8b-q4_k_m --out "$model"
names=""
for v in "$@"; do
  name=${v%%=*} rest=${v#*=}
  case "$rest" in *@*) echo "${rest#*@}" | tr ',' ' ' > "$work/ab/$name.flags"; rest=${rest%%@*} ;; *) : > "$work/ab/$name.flags" ;; esac
  bin=${rest%%:*}
  [ -x "$work/ab/$name" ] || { xz -dc "$bin" > "$work/ab/$name"; chmod +x "$work/ab/$name"; }
  case "$rest" in *:*) echo "${rest#*:}" > "$work/ab/$name.env" ;; *) : > "$work/ab/$name.env" ;; esac
  names="$names $name"
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
run() {  # NAME ARGS...: the variant's binary with its environment setting and flags
  name=$1; shift
  env $(cat "$work/ab/$name.env") "$work/ab/$name" bench "$model" --device cuda $(cat "$work/ab/$name.flags") "$@" 2>&1
}
for r in $(seq 1 "${ROUNDS:-2}"); do
  for n in $names; do
    echo "== $n round $r $(cat "$work/ab/$n.env" "$work/ab/$n.flags")"
    run "$n" -p 512 -n 128 -r 3 | grep -E "pp512|tg128|rror"
  done
done
# SAMPLING=1: `exo run` on the same model, 256 tokens with the default sampler (top-k 40,
# top-p 0.95, min-p 0.05, temperature 0.8) and greedy, where the sampler's work shows.
if [ "${SAMPLING:-0}" = 1 ]; then
  for n in $names; do
    for how in "--seed 1" "--temperature 0"; do
      echo "== $n exo run $how $(cat "$work/ab/$n.env" "$work/ab/$n.flags")"
      env $(cat "$work/ab/$n.env") "$work/ab/$n" run "$model" "Once upon a time" -n 256 --device cuda --verbose \
        $(cat "$work/ab/$n.flags") $how 2>&1 >/dev/null | grep -E "generated|rror"
    done
  done
fi
if [ "${PARALLEL:-1}" = 1 ]; then
  for n in $names; do
    echo "== $n --parallel 8,32 $(cat "$work/ab/$n.env" "$work/ab/$n.flags")"
    run "$n" --parallel 8,32 -p 512 -n 128 -r 2 | grep -E "^\| (PP|512)|rror"
  done
fi
