"""References for `exo convert`: transformers loads the Hugging Face directories exo writes from
GGUF, and llama.cpp loads the GGUF exo writes back from them.

Usage: gen_convert.py [MODEL...]   (default: all three)

Needs the exo binary: $EXO_BIN, else `cargo build --profile fast -p exo-cli` is run and
target/fast/exo (under $CARGO_TARGET_DIR if set) is used.

For each GGUF model (SmolLM2-135M, Qwen2.5-Coder-0.5B, Gemma-3-270M):
  1. `exo convert MODEL.gguf DIR --dtype f32`; transformers loads DIR (AutoModelForCausalLM,
     AutoTokenizer). Its float32 logits must equal those of transformers' own GGUF loader
     (`gguf_file=`, which dequantizes the same blocks) to 1e-5 relative, and AutoTokenizer on DIR
     must give llama.cpp's ids for the texts of tests/fixtures/llamacpp/<model>.json (the cases
     without BOS and with special-token texts parsed, which is what transformers does; NFC texts only, since
     transformers' Qwen2 tokenizer normalizes to NFC and llama.cpp does not).
  2. `exo convert DIR RT.gguf`; llama-cpp-python loads RT.gguf and decodes PROMPT greedily.

Writes tests/fixtures/convert/<model>.json:
  {"model", "transformers", "llama_cpp", "hf_vs_gguf_max_rel_diff",
   "logits": {"ids", "positions", "indices", "logits"}   # transformers on DIR, sparse as in
                                                          # transformers/*.json, last 3 positions
   "roundtrip_greedy": {"prompt_ids", "ids", "margins"}}  # llama.cpp on RT.gguf, 24 tokens
"""

import json
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

from _common import FIXTURES, exo_bin, f32, gguf_path, llama_greedy, write_json

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"]
PROMPT = "The lighthouse keeper climbed the stairs every morning to"
N_GREEDY = 24
TOP = 32


def run(name, exo, tmp):
    import llama_cpp
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(name)
    hf_dir, rt = tmp / f"{name}-hf", tmp / f"{name}-rt.gguf"
    subprocess.run([exo, "convert", str(src), str(hf_dir), "--dtype", "f32"], check=True)
    ours = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    fx = json.loads((FIXTURES / "llamacpp" / f"{name}.json").read_text())
    for case in fx["tokenize"]:
        # transformers always parses special-token texts, like llama.cpp's parse_special.
        if case["add_bos"] or not case["special"]:
            continue
        # transformers' Qwen2 tokenizer class normalizes to NFC on its own; llama.cpp (and the
        # tokenizer.json exo writes from the GGUF) does not, so only NFC texts compare.
        if unicodedata.normalize("NFC", case["text"]) != case["text"]:
            continue
        got = tok(case["text"], add_special_tokens=False)["input_ids"]
        assert got == case["ids"], f"{name}: {case['text']!r}: transformers {got} vs llama.cpp {case['ids']}"
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        a = ours(torch.tensor([ids])).logits[0].numpy()
        b = ref(torch.tensor([ids])).logits[0].numpy()
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    assert rel < 1e-5, f"{name}: converted directory differs from transformers' GGUF load by {rel}"
    positions = list(range(len(ids) - 3, len(ids)))
    chosen = set(np.random.default_rng(0).choice(a.shape[-1], size=TOP, replace=False).tolist())
    for p in positions:
        chosen.update(np.argsort(-a[p], kind="stable")[:TOP].tolist())
    indices = sorted(int(i) for i in chosen)
    del ours, ref

    subprocess.run([exo, "convert", str(hf_dir), str(rt)], check=True)
    llm = llama_cpp.Llama(model_path=str(rt), n_ctx=256, logits_all=True, verbose=False)
    prompt_ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)
    out, margins = llama_greedy(llm, prompt_ids, N_GREEDY)
    write_json(FIXTURES / "convert" / f"{name}.json", {
        "model": name,
        "transformers": transformers.__version__,
        "llama_cpp": llama_cpp.__version__,
        "hf_vs_gguf_max_rel_diff": rel,
        "logits": {"ids": ids, "positions": positions, "indices": indices,
                   "logits": [[f32(a[p][i]) for i in indices] for p in positions]},
        "roundtrip_greedy": {"prompt_ids": list(prompt_ids), "ids": out, "margins": margins},
    })


def main():
    exo = exo_bin()
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or MODELS:
            run(name, exo, Path(tmp))
            for p in Path(tmp).iterdir():
                subprocess.run(["rm", "-rf", str(p)], check=True)


if __name__ == "__main__":
    main()
