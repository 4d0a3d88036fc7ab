#!/usr/bin/env python3
"""Random-weight GGUF models of real shapes, for GPU speed runs and GPU-vs-CPU checks.

Only the `gguf` package and NumPy are needed, so this runs on the lent GPU machine, where no model
can be downloaded. Two steps:

  # here, once: keep only the tokenizer of a real model (a few MB, small enough to carry)
  gguf_random.py tokenizer ~/.exo/models/qwen2.5-coder-1.5b-instruct.gguf tok.gguf
  # there: a model of a named shape with that tokenizer
  gguf_random.py model --tokenizer tok.gguf --shape llama3-8b-q4_k_m --out model.gguf

Quantized tensors are random bytes with their scale fields set to small finite f16 values, so
every block decodes to weights of a few hundredths, like a trained model's. The tensor types
follow llama.cpp's Q4_K_M recipe (Q6_K for the LM head and for attn_v / ffn_down in the layers
llama.cpp gives more bits), or a rotation through every type exo's GPU kernels read ("mixed").
"""
import argparse
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter

SHAPES = {
    # name: (arch, layers, hidden, heads, kv heads, ffn, rope theta, ctx, eps, qkv bias, tied, types)
    "llama3-8b-q4_k_m": ("llama", 32, 4096, 32, 8, 14336, 500000.0, 8192, 1e-5, False, False, "q4_k_m"),
    "qwen2.5-1.5b-q4_k_m": ("qwen2", 28, 1536, 12, 2, 8960, 1000000.0, 32768, 1e-6, True, True, "q4_k_m"),
    "llama-mixed": ("llama", 9, 1024, 8, 2, 2816, 10000.0, 4096, 1e-5, False, False, "mixed"),
    # Gemma 3's layout (256-wide heads, per-head q/k norms, norms after attention and feed-forward,
    # tied embeddings, sliding-window layers) at a width k-quants take, with a 32-token window so
    # that the test prompts reach past it.
    "gemma3-mixed": ("gemma3", 8, 1024, 4, 1, 2816, 1000000.0, 32768, 1e-6, False, True, "mixed"),
}
# Extra metadata per architecture: per-head size and the sliding window.
GEMMA3_HEAD_DIM = 256
GEMMA3_WINDOW = 32

# (elements, bytes) per block and the byte offsets of f16 scale fields with their magnitudes.
BLOCKS = {
    Q.Q4_K: (256, 144, [(0, 1.2e-4), (2, 1.2e-4)]),
    Q.Q5_K: (256, 176, [(0, 6e-5), (2, 6e-5)]),
    Q.Q6_K: (256, 210, [(208, 2.5e-5)]),
    Q.Q8_0: (32, 34, [(0, 3e-4)]),
    Q.Q4_0: (32, 18, [(0, 4e-3)]),
    Q.Q4_1: (32, 20, [(0, 4e-3), (2, -2e-2)]),
    Q.Q5_0: (32, 22, [(0, 2e-3)]),
    Q.Q5_1: (32, 24, [(0, 2e-3), (2, -3e-2)]),
}
MIXED = [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.F16]


def tokenizer(src, dst):
    """Copies the tokenizer.* keys of `src` into a tensor-less GGUF at `dst`."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, "template")
    for key, field in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def random_tensor(rng, rows, cols, qtype):
    if qtype == Q.F32:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
    if qtype == Q.F16:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
    qk, nbytes, scales = BLOCKS[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // qk, nbytes), dtype=np.uint8)
    for off, mag in scales:
        vals = (mag * rng.uniform(0.5, 1.5, size=blocks.shape[0])).astype(np.float16)
        blocks[:, off:off + 2] = vals.view(np.uint8).reshape(-1, 2)
    # ggml's quantizers never write -128 to the int8 fields (Q8_0 values, Q6_K sub-block scales),
    # and CPU kernels rely on it (sign tricks for u8 x s8 dot products); keep random data in range.
    signed = {Q.Q8_0: (2, 34), Q.Q6_K: (192, 208)}.get(qtype)
    if signed:
        field = blocks[:, signed[0]:signed[1]]
        field[field == 0x80] = 0x81
    return blocks.reshape(rows, cols // qk * nbytes)


def model(tok_path, shape, out, seed, types=None):
    arch, n_layer, hidden, heads, kv, ffn, theta, ctx, eps, bias, tied, recipe = SHAPES[shape]
    tok = GGUFReader(tok_path)
    vocab = len(tok.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, arch)
    w.add_name(f"random {shape}")
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(vocab)
    gemma = arch == "gemma3"
    if gemma:
        w.add_key_length(GEMMA3_HEAD_DIM)
        w.add_value_length(GEMMA3_HEAD_DIM)
        w.add_sliding_window(GEMMA3_WINDOW)
    for key, field in tok.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            w.add_key_value(key, field.contents(), vtype, field.types[-1] if vtype == GGUFValueType.ARRAY else None)

    head_dim = GEMMA3_HEAD_DIM if gemma else hidden // heads
    mixed = iter((types or MIXED) * 1000)

    def qtype(name, layer=None):
        if recipe == "mixed" or types:
            return next(mixed)
        more_bits = layer is not None and (layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2)
        if name == "output" or (name in ("attn_v", "ffn_down") and more_bits):
            return Q.Q6_K
        return Q.Q4_K

    def add(name, rows, cols, qt):
        w.add_tensor(name, random_tensor(rng, rows, cols, qt), raw_dtype=qt)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    add("token_embd.weight", vocab, hidden, qtype("token_embd"))
    for i in range(n_layer):
        norm(f"blk.{i}.attn_norm.weight", hidden)
        for part, rows in (("attn_q", heads * head_dim), ("attn_k", kv * head_dim), ("attn_v", kv * head_dim)):
            add(f"blk.{i}.{part}.weight", rows, hidden, qtype(part, i))
            if bias:
                w.add_tensor(f"blk.{i}.{part}.bias", (0.05 * rng.standard_normal(rows)).astype(np.float32))
        if gemma:
            norm(f"blk.{i}.attn_q_norm.weight", head_dim)
            norm(f"blk.{i}.attn_k_norm.weight", head_dim)
        add(f"blk.{i}.attn_output.weight", hidden, heads * head_dim, qtype("attn_output", i))
        if gemma:
            norm(f"blk.{i}.post_attention_norm.weight", hidden)
        norm(f"blk.{i}.ffn_norm.weight", hidden)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden, qtype("ffn_gate", i))
        add(f"blk.{i}.ffn_up.weight", ffn, hidden, qtype("ffn_up", i))
        add(f"blk.{i}.ffn_down.weight", hidden, ffn, qtype("ffn_down", i))
        if gemma:
            norm(f"blk.{i}.post_ffw_norm.weight", hidden)
    norm("output_norm.weight", hidden)
    if not tied:
        add("output.weight", vocab, hidden, qtype("output"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer", help="keep only the tokenizer of a real GGUF")
    t.add_argument("src")
    t.add_argument("dst")
    m = sub.add_parser("model", help="write a random-weight model")
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--shape", required=True, choices=sorted(SHAPES))
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--types", help="comma-separated ggml types to rotate through instead of the shape's recipe (e.g. q8_0)")
    a = p.parse_args()
    if a.cmd == "tokenizer":
        tokenizer(a.src, a.dst)
    else:
        types = [Q[t.upper()] for t in a.types.split(",")] if a.types else None
        model(a.tokenizer, a.shape, a.out, a.seed, types)
    return 0


if __name__ == "__main__":
    sys.exit(main())
