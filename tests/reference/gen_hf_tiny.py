"""Tiny random Hugging Face checkpoints (llama, qwen2, gemma3) with transformers' logits for them.

Writes three self-contained model directories under tests/fixtures/:

  hf-tiny-llama/   LlamaForCausalLM, bf16 weights, llama3 rope scaling, head_dim given explicitly
                   (4 heads x 8 = 32 != hidden 16), chat_template in tokenizer_config.json,
                   generation_config.json with a list of EOS ids. config.json is written in the
                   "legacy" layout most Hub checkpoints have (top-level rope_theta + rope_scaling,
                   torch_dtype), which transformers 5 still reads.
  hf-tiny-qwen2/   Qwen2ForCausalLM, f16 weights, q/k/v biases. config.json exactly as
                   transformers 5 writes it (rope_parameters: {rope_type, rope_theta}, dtype).
  hf-tiny-gemma3/  Gemma3ForCausalLM (model_type gemma3_text), f32 weights, layer_types
                   [sliding, full, sliding, full] with sliding_window 4, query_pre_attn_scalar 16
                   (!= head_dim 8), separate global/local rope bases. config.json in the layout of
                   the gemma-3 Hub checkpoints (rope_theta, rope_local_base_freq,
                   sliding_window_pattern next to layer_types).

Each holds config.json, generation_config.json, weights sharded into 2 safetensors files with
model.safetensors.index.json (embeddings tied to the LM head), and tokenizer.json +
tokenizer_config.json copied from all-minilm-l6-v2 (BERT WordPiece, 30,522 ids; good enough to
turn text into ids, which is all a logits test needs).

Weights: torch.manual_seed(0); every tensor is then redrawn so that nothing keeps its
transformers default (norm weights of exactly 1 or 0 and zero biases would hide bugs): linear
weights N(0, 1/fan_in), embeddings N(0, 0.3^2), qkv biases N(0, 0.5^2), RMSNorm weights
1 + N(0, 0.2^2) (gemma: N(0, 0.3^2), since gemma scales by 1 + w). The weights are then cast to the
storage dtype and saved; logits come from reloading the directory with transformers in float32,
eager attention.

logits.json in each directory:
  {"transformers", "torch", "weights_dtype", "compute_dtype": "float32",
   "cases": [{"ids", "positions", "indices", "logits", "logsumexp"}]}
for two id sequences (a tokenized sentence with [CLS]/[SEP], and 12 pseudo-random ids), all
positions. A full 30,522-wide row per position would make the file several MB, so `indices`
(ascending) is the union over positions of each position's top-64 plus 64 fixed pseudo-random ids
(numpy default_rng(0)); logits[p][j] is the logit of indices[j] at positions[p], and logsumexp[p]
is over the whole vocabulary (float64).

Before writing, the script checks that each non-default config value really changes the logits
(rope theta, rms_norm_eps, llama3 scaling, sliding window, query_pre_attn_scalar, local rope base),
so a loader that ignores one of them fails the logits test. It prints the size of each change.
"""

import copy
import json
import shutil
import time

import numpy as np

from _common import FIXTURES, f32, models_dir, write_json

VOCAB = 30522
TOP = 64
N_RANDOM = 64
SENTENCE = "Hello world, this is a tiny test!"

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        rms_norm_eps=1e-2,
        # llama3 scaling: with head_dim 8 and theta 100 the four rotary frequencies have
        # wavelengths 6.3, 19.9, 62.8 and 199 positions; with original_max_position_embeddings 32
        # the first is below 32/high_freq_factor (kept), the second between the two limits
        # (interpolated), the last two above 32/low_freq_factor (divided by the factor), so all
        # three branches of the llama3 rule are used.
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 100.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        tie_word_embeddings=True,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )


def qwen2_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=3e-2,
        rope_parameters={"rope_type": "default", "rope_theta": 50.0},
        tie_word_embeddings=True,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )


def gemma3_config():
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        rms_norm_eps=3e-2,
        query_pre_attn_scalar=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 500.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 20.0},
        },
        tie_word_embeddings=True,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )


def legacy_llama(cfg: dict) -> dict:
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


def legacy_gemma3(cfg: dict) -> dict:
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["full_attention"]["rope_theta"]
    cfg["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    cfg["rope_scaling"] = None
    cfg["sliding_window_pattern"] = 2
    cfg.pop("_sliding_window_pattern", None)  # a private attribute transformers 5.23 leaks (as 6)
    cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


# name -> (config factory, storage dtype, rewrite of config.json or None, perturbations to check)
MODELS = {
    "hf-tiny-llama": (
        llama_config,
        "bfloat16",
        legacy_llama,
        {
            "rope_theta 100 -> 10000": lambda c: c["rope_parameters"].update(rope_theta=10000.0),
            "no llama3 scaling": lambda c: c.update(rope_parameters={"rope_type": "default", "rope_theta": 100.0}),
            "rms_norm_eps 1e-2 -> 1e-6": lambda c: c.update(rms_norm_eps=1e-6),
        },
    ),
    "hf-tiny-qwen2": (
        qwen2_config,
        "float16",
        None,
        {
            "rope_theta 50 -> 10000": lambda c: c["rope_parameters"].update(rope_theta=10000.0),
            "rms_norm_eps 3e-2 -> 1e-6": lambda c: c.update(rms_norm_eps=1e-6),
        },
    ),
    "hf-tiny-gemma3": (
        gemma3_config,
        "float32",
        legacy_gemma3,
        {
            "global rope_theta 500 -> 1e6": lambda c: c["rope_parameters"]["full_attention"].update(rope_theta=1e6),
            "local rope_theta 20 -> 1e4": lambda c: c["rope_parameters"]["sliding_attention"].update(rope_theta=1e4),
            "sliding_window 4 -> 4096": lambda c: c.update(sliding_window=4096),
            "all layers full attention": lambda c: c.update(layer_types=["full_attention"] * 4),
            "query_pre_attn_scalar 16 -> 8": lambda c: c.update(query_pre_attn_scalar=8),
            "rms_norm_eps 3e-2 -> 1e-6": lambda c: c.update(rms_norm_eps=1e-6),
        },
    ),
}


def randomize(model, gemma: bool):
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = p.shape
            noise = torch.randn(shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                value = 0.3 * noise if gemma else 1.0 + 0.2 * noise
            elif name.endswith("bias"):
                value = 0.5 * noise
            elif "embed_tokens" in name:
                value = 0.3 * noise
            else:
                value = noise / np.sqrt(shape[-1])
            p.copy_(value.to(p.dtype))


def input_cases(tokenizer_json):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads every input to 128 ids
    sentence = tokenizer.encode(SENTENCE).ids
    rng = np.random.default_rng(0)
    randoms = [int(i) for i in rng.integers(1000, VOCAB, size=12)]
    return [sentence[:12], randoms]


def forward(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()


def sparse_case(ids, logits):
    vocab = logits.shape[-1]
    chosen = set(np.random.default_rng(0).choice(vocab, size=N_RANDOM, replace=False).tolist())
    for row in logits:
        chosen.update(np.argsort(-row, kind="stable")[:TOP].tolist())
    indices = sorted(int(i) for i in chosen)
    rows = logits.astype(np.float64)
    m = rows.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))
    return {
        "ids": ids,
        "positions": list(range(len(ids))),
        "indices": indices,
        "logits": [[f32(row[i]) for i in indices] for row in logits],
        "logsumexp": [float(f"{x:.12g}") for x in lse],
    }


def build(name, make_config, dtype_name, rewrite, perturbations):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dtype = getattr(torch, dtype_name)
    gemma = "gemma" in name

    torch.manual_seed(0)
    config = make_config()
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, gemma)
    model = model.to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=101,
        eos_token_id=[102, 103] if name == "hf-tiny-llama" else 102,
        pad_token_id=0,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    )
    model.save_pretrained(out, max_shard_size="200KB")

    if rewrite is not None:
        cfg_path = out / "config.json"
        cfg = rewrite(json.loads(cfg_path.read_text()))
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    src = models_dir() / "all-minilm-l6-v2"
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg.pop("name_or_path", None)
    if name == "hf-tiny-llama":
        tok_cfg.update(bos_token="[CLS]", eos_token="[SEP]", chat_template=LLAMA_TEMPLATE)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")

    shards = sorted(p.name for p in out.glob("*.safetensors"))
    if len(shards) < 2 or not (out / "model.safetensors.index.json").exists():
        raise SystemExit(f"{name}: expected >= 2 shards and an index, got {shards}")

    # Reference logits: reload exactly what was written, compute in float32.
    ref = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    loaded = ref.config.to_dict()
    for key in ("rms_norm_eps", "rope_parameters", "sliding_window", "layer_types", "query_pre_attn_scalar", "head_dim"):
        if key in loaded and loaded[key] != config.to_dict().get(key):
            raise SystemExit(f"{name}: {key} reloads as {loaded[key]!r}, wrote {config.to_dict().get(key)!r}")

    cases = input_cases(out / "tokenizer.json")
    all_logits = [forward(ref, ids) for ids in cases]

    # Each non-default value must change the logits, or a loader ignoring it would still pass.
    state = ref.state_dict()
    checks = {"nothing (baseline)": lambda c: None, **perturbations}
    for label, change in checks.items():
        cfg = copy.deepcopy(ref.config.to_dict())
        change(cfg)
        cfg_obj = type(ref.config).from_dict(cfg)
        cfg_obj._attn_implementation = "eager"
        other = AutoModelForCausalLM.from_config(cfg_obj, dtype=torch.float32)
        other.load_state_dict(state, strict=True)
        other.eval()
        diff = max(float(np.abs(forward(other, ids) - lg).max()) for ids, lg in zip(cases, all_logits))
        print(f"  [{name}] {label}: logits change by up to {diff:.3g}")
        if label.startswith("nothing"):
            if diff > 0:
                raise SystemExit(f"{name}: rebuilding the model from its own config changes the logits by {diff:.3g}")
        elif diff < 1e-2:
            raise SystemExit(f"{name}: '{label}' changes the logits by only {diff:.3g}")

    for ids, lg in zip(cases, all_logits):
        print(f"  [{name}] ids {ids}: argmax per position {lg.argmax(axis=1).tolist()}, logit std {lg.std():.2f}")

    write_json(
        out / "logits.json",
        {
            "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0],
            "weights_dtype": dtype_name,
            "compute_dtype": "float32",
            "cases": [sparse_case(ids, lg) for ids, lg in zip(cases, all_logits)],
        },
    )
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"  [{name}] {sorted(p.name for p in out.iterdir())}: {total:,} bytes")


def main():
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(2)
    t0 = time.time()
    for name, spec in MODELS.items():
        build(name, *spec)
    print(f"  done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
