"""Hugging Face transformers reference logits for the GGUF models, dequantized to float32.

transformers reads each GGUF with `gguf_file=` and dequantizes every tensor to float32 with the
`gguf` package, so these logits are those of the float model the quantized blocks decode to, with
no activation quantization (llama.cpp's CPU matmuls quantize activations to 8 bits, so its logits
differ from these by a little). All four models load, gemma3 included (transformers maps the
`gemma3` GGUF architecture to `gemma3_text` and undoes llama.cpp's "+1" on the norm weights).

Writes tests/fixtures/transformers/<name>.json:

  {"model", "transformers", "torch", "dtype": "float32",
   "cases": [{"prompt_ids", "positions", "indices", "logits", "logsumexp"}]}

For each case the prompt ids are those of the llama.cpp fixture's greedy prompts ("prose" and
"code", both at most 40 tokens). `positions` are the last 3 positions of the prompt; `indices`
(ascending) is the union of the top-32 logits at each stored position and 32 fixed pseudo-random
vocabulary ids (numpy default_rng(0)); `logits[p][j]` is the logit of `indices[j]` at
`positions[p]`; `logsumexp[p]` is log(sum(exp(logits))) over the whole vocabulary at that position
(float64), so log-probabilities can be compared too.

Usage: gen_transformers.py [MODEL...]   (default: all four; needs the llama.cpp fixtures first)
"""

import json
import sys
import time

import numpy as np

from _common import FIXTURES, GGUF_MODELS, f32, gguf_path, write_json

TOP = 32
N_RANDOM = 32
N_POSITIONS = 3
MAX_PROMPT = 40
PROMPTS = 2  # the first two greedy prompts of the llama.cpp fixture: prose and code


def run_model(name):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.time()
    path = gguf_path(name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    print(f"  [{name}] loaded {type(model).__name__} in {time.time() - t0:.1f}s")

    llamacpp = json.loads((FIXTURES / "llamacpp" / f"{name}.json").read_text(encoding="utf-8"))
    cases = []
    for greedy, top in zip(llamacpp["greedy"][:PROMPTS], llamacpp["top_logprobs"][:PROMPTS]):
        ids = greedy["prompt_ids"]
        if len(ids) > MAX_PROMPT:
            raise SystemExit(f"{name}: prompt of {len(ids)} ids is over {MAX_PROMPT}")
        with torch.no_grad():
            logits = model(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()
        vocab = logits.shape[-1]
        positions = list(range(len(ids) - N_POSITIONS, len(ids)))
        chosen = set(np.random.default_rng(0).choice(vocab, size=N_RANDOM, replace=False).tolist())
        for p in positions:
            chosen.update(np.argsort(-logits[p], kind="stable")[:TOP].tolist())
        indices = sorted(int(i) for i in chosen)
        rows = logits[positions].astype(np.float64)
        m = rows.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))).tolist()
        cases.append(
            {
                "prompt_ids": ids,
                "positions": positions,
                "indices": indices,
                "logits": [[f32(logits[p, i]) for i in indices] for p in positions],
                "logsumexp": [float(f"{x:.12g}") for x in lse],
            }
        )
        argmax = int(np.argmax(logits[-1]))
        # How far the float model is from llama.cpp's quantized arithmetic: log-probs of
        # llama.cpp's top-10 at the last position.
        diff = max(abs(float(logits[-1, i]) - lse[-1] - lp) for i, lp in top["top"])
        print(
            f"  [{name}] {len(ids)} ids: argmax at last position {argmax} "
            f"(llama.cpp greedy first token {greedy['ids'][0]}), {len(indices)} indices, "
            f"max |logprob - llama.cpp logprob| over llama.cpp's top-10: {diff:.3f}"
        )

    write_json(
        FIXTURES / "transformers" / f"{name}.json",
        {
            "model": name,
            "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0],
            "dtype": "float32",
            "cases": cases,
        },
    )
    print(f"  [{name}] done in {time.time() - t0:.1f}s")


def main():
    for name in sys.argv[1:] or GGUF_MODELS:
        run_model(name)


if __name__ == "__main__":
    main()
