#!/usr/bin/env python3
"""The CUDA kernels' block decoders, checked on the CPU against the `gguf` package.

crates/exo-kernels/src/cuda/blocks.cuh is compiled as plain C++ (g++) over the small stand-ins for
CUDA's half/int4/dp4a in this folder. For every quantized type the GPU reads, random blocks
(bench/gguf_random.py's) must dequantize exactly as gguf.quants.dequantize does, and the dp4a dot
products must equal the dot product of those weights with the int8-rounded activations. No GPU is
needed:  ~/.cache/exo-dev/venv/bin/python tests/gpu/blocks/check.py
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../../bench"))
import gguf_random  # noqa: E402

N = 4096
tmp = tempfile.mkdtemp()
exe = os.path.join(tmp, "harness")
subprocess.run(["g++", "-O1", "-std=c++17", "-I", here, "-o", exe, os.path.join(here, "harness.cpp")], check=True)
rng = np.random.default_rng(1)
bad = []
for qt in [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]:
    blocks = gguf_random.random_tensor(rng, 1, N, qt)
    wpath, dpath = os.path.join(tmp, "w.bin"), os.path.join(tmp, "deq.bin")
    blocks.tofile(wpath)
    out = subprocess.run([exe, str(int(qt)), wpath, str(N), dpath], capture_output=True, text=True, check=True).stdout.split()
    ref = quants.dequantize(blocks.reshape(-1), qt).reshape(-1).astype(np.float32)
    got = np.fromfile(dpath, dtype=np.float32)
    deq_err = float(np.abs(ref - got).max() / np.abs(ref).max())
    q8ref, kernel = float(out[3]), float(out[5])
    dot_err = abs(kernel - q8ref) / max(abs(q8ref), 1e-9)
    print(f"{qt.name:5} dequantize max rel err {deq_err:.1e}  dp4a dot {kernel:.6g} vs {q8ref:.6g} (rel err {dot_err:.1e})")
    if deq_err > 0 or dot_err > 1e-5:
        bad.append(qt.name)
sys.exit(f"mismatch: {bad}" if bad else 0)
