"""Quantization references for exo-quant (crates/exo-quant/tests/reference.rs).

Test matrix: 8 rows of 1024 float32 values with the shapes quantizers must cope with (normal rows
of very different scales, heavy-tailed Student-t rows, a row with a few large outliers, and a row
of all-zero, constant-negative, all-positive and normal blocks), from a fixed seed.

- ggml types (q4_0, q4_1, q5_0, q5_1, q8_0, q3_K, q4_K, q5_K, q6_K): ggml's own quantizer without an
  importance matrix (`ggml_quantize_chunk` from the libggml-base that llama-cpp-python ships, the
  one `llama-quantize` calls), its bytes dequantized by the `gguf` package. For the legacy types
  the `gguf` package's NumPy quantizer must give the same bytes (checked here).
- The same ggml quantizer given an importance matrix (q4_0, q5_0, q3_K, q4_K, q5_K, q6_K), as
  `llama-quantize --imatrix` runs it: imatrix.f32 holds one importance per column (a log-normal
  spread, as the mean squared activations of LLM hidden states have), and
  <type>.imatrix.dequant.f32 ggml's result, dequantized by the `gguf` package.
- nf4, fp8_e4m3, int8, int4: NumPy references of the formats as exo-quant documents them (FP8
  codes from torch's float8_e4m3fn conversion).

Writes tests/fixtures/quant/: input.f32 (raw little-endian), <type>.bin (packed bytes),
<type>.dequant.f32, and manifest.json {"rows", "cols", "types": {type: {"rmse", "bytes"}}} where
rmse is the root-mean-square error of the reference quantization of the input.
"""

import ctypes
import glob
import os

import gguf
import llama_cpp
import numpy as np
import torch

from _common import FIXTURES, write_json

ROWS, COLS = 8, 1024
OUT = FIXTURES / "quant"

# ggml type ids (ggml.h) of the types exo quantizes.
GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q3_K": 11, "q4_K": 12, "q5_K": 13, "q6_K": 14}

# QLoRA's NF4 levels (bitsandbytes' table, float32).
NF4 = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0], dtype=np.float32)


def test_matrix() -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = [rng.normal(0, s, COLS) for s in (0.02, 0.05, 1.0, 0.003)]
    rows += [0.03 * rng.standard_t(4, COLS) for _ in range(2)]
    r = rng.normal(0, 0.02, COLS)
    r[rng.choice(COLS, 6, replace=False)] *= 25
    rows.append(r)
    mixed = np.concatenate([np.zeros(256), np.full(256, -0.5), rng.uniform(0.1, 0.4, 256), rng.normal(0, 0.1, 256)])
    rows.append(mixed)
    return np.stack(rows).astype(np.float32)


def ggml_lib():
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(sorted(glob.glob(os.path.join(libdir, "libggml-base.so*")))[0])
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return f


def ggml_quantize(fn, x: np.ndarray, type_id: int, row_bytes: int, imatrix=None) -> np.ndarray:
    out = np.zeros(x.shape[0] * row_bytes, dtype=np.uint8)
    im = None if imatrix is None else imatrix.ctypes.data
    n = fn(type_id, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], im)
    assert n == out.size, (n, out.size)
    return out


def round_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))


def f16_scale(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16)


def nf4(x):
    blocks = x.reshape(-1, 64)
    s16 = f16_scale(np.abs(blocks).max(axis=1, keepdims=True))
    s = s16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(s > 0, blocks / s, np.float32(0))
    codes = np.abs(v[..., None] - NF4).argmin(axis=-1).astype(np.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    data = np.concatenate([s16.view(np.uint8), packed], axis=1)
    return data.reshape(-1), (NF4[codes] * s).reshape(x.shape)


def fp8(x):
    scale = (np.abs(x).max(axis=1, keepdims=True) / np.float32(448)).astype(np.float32)
    v = np.where(scale > 0, x / np.where(scale > 0, scale, 1), np.float32(0)).astype(np.float32)
    codes = torch.from_numpy(v).to(torch.float8_e4m3fn)
    deq = codes.to(torch.float32).numpy() * scale
    data = np.concatenate([scale.view(np.uint8), codes.view(torch.uint8).numpy()], axis=1)
    return data.reshape(-1), deq


def symmetric(x, denom, lo, hi, bits):
    groups = x.reshape(-1, 128)
    s16 = f16_scale(np.abs(groups).max(axis=1, keepdims=True) * np.float32(2 if bits == 4 else 1) / np.float32(denom))
    s = s16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s > 0, np.clip(round_away(groups / s), lo, hi), 0).astype(np.int8)
    if bits == 8:
        body = q.view(np.uint8)
    else:
        u = (q + 8).astype(np.uint8)
        body = u[:, 0::2] | (u[:, 1::2] << 4)
    data = np.concatenate([s16.view(np.uint8), body], axis=1)
    return data.reshape(-1), (q.astype(np.float32) * s).reshape(x.shape)


def main():
    x = test_matrix()
    OUT.mkdir(parents=True, exist_ok=True)
    x.tofile(OUT / "input.f32")
    manifest = {"rows": ROWS, "cols": COLS, "types": {}}

    def record(name, data, deq):
        data.astype(np.uint8).tofile(OUT / f"{name}.bin")
        deq.astype(np.float32).tofile(OUT / f"{name}.dequant.f32")
        rmse = float(np.sqrt(np.mean((deq.astype(np.float64) - x.astype(np.float64)) ** 2)))
        manifest["types"][name] = {"rmse": rmse, "bytes": int(data.size)}
        print(f"{name:9} {data.size:6} bytes  rmse {rmse:.6g}")

    quantize_chunk = ggml_lib()
    for name, tid in GGML_TYPES.items():
        qt = gguf.GGMLQuantizationType(tid)
        block, size = gguf.GGML_QUANT_SIZES[qt]
        data = ggml_quantize(quantize_chunk, x, tid, COLS // block * size)
        if name in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
            ours = gguf.quantize(x, qt).reshape(-1)
            assert np.array_equal(ours, data), f"gguf's {name} quantizer differs from ggml's"
        deq = gguf.dequantize(data.reshape(ROWS, -1), qt)
        record(name, data, deq)
    imatrix = np.random.default_rng(11).lognormal(0.0, 1.5, COLS).astype(np.float32)
    imatrix.tofile(OUT / "imatrix.f32")
    for name in ("q4_0", "q5_0", "q3_K", "q4_K", "q5_K", "q6_K"):
        qt = gguf.GGMLQuantizationType(GGML_TYPES[name])
        block, size = gguf.GGML_QUANT_SIZES[qt]
        data = ggml_quantize(quantize_chunk, x, GGML_TYPES[name], COLS // block * size, imatrix)
        gguf.dequantize(data.reshape(ROWS, -1), qt).astype(np.float32).tofile(OUT / f"{name}.imatrix.dequant.f32")
    record("nf4", *nf4(x))
    record("fp8_e4m3", *fp8(x))
    record("int8", *symmetric(x, 127, -127, 127, 8))
    record("int4", *symmetric(x, 15, -8, 7, 4))
    write_json(OUT / "manifest.json", manifest, indent=1)


if __name__ == "__main__":
    main()
