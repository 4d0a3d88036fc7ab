"""Perplexity and KL divergence references for `exo perplexity`, on tests/fixtures/perplexity/lighthouse.txt
(about 5 kB of prose written for exo's tests).

Computed the way llama.cpp's `llama-perplexity` does, through llama-cpp-python's low-level
evaluation with `logits_all`: the text is tokenized once with add_special (BOS when the
vocabulary adds one), cut into non-overlapping chunks of CTX tokens, each chunk evaluated from an
empty cache with its first token replaced by BOS (when the vocabulary adds one), and the second
half of each chunk scored (position j predicts token j+1 for CTX/2 <= j < CTX-1). PPL is
exp(mean NLL), its error sd(NLL)/sqrt(n-1)*PPL as llama.cpp prints it.

KL divergence: for the same chunks, transformers' float32 logits of the GGUF dequantized
(`gguf_file=`, the weights exo's `--kld-base dequantized` computes with) are the base, llama.cpp's
quantized logits the model: mean of sum p_base (log p_base - log p_model) over scored positions,
and the fraction of positions whose argmax agrees.

Writes tests/fixtures/perplexity/<model>.json:
  {"model", "llama_cpp", "transformers", "ctx", "n_tokens", "tokens_head", "chunks",
   "chunk_ppl" (running PPL after each chunk), "ppl", "ppl_stderr", "scored",
   "kld_dequantized": {"mean", "top1_agreement", "base_ppl"}}
"""

import numpy as np

from _common import FIXTURES, gguf_path, write_json

CTX = 128
MODELS = ["smollm2-135m-instruct"]


def log_softmax(rows):
    rows = rows.astype(np.float64)
    m = rows.max(axis=-1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=-1, keepdims=True))


def run(name):
    import llama_cpp
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    path = gguf_path(name)
    text = (FIXTURES / "perplexity" / "lighthouse.txt").read_text(encoding="utf-8")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX, n_batch=CTX, logits_all=True, verbose=False)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    bos = llm.token_bos()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    first = CTX // 2
    n_chunks = len(tokens) // CTX
    nll, base_nll, kld, agree, running = [], [], [], 0, []
    for c in range(n_chunks):
        chunk = list(tokens[c * CTX:(c + 1) * CTX])
        if add_bos:
            chunk[0] = bos
        targets = np.array(tokens[c * CTX + first + 1:(c + 1) * CTX])
        llm.reset()
        llm.eval(chunk)
        lp = log_softmax(np.array(llm.scores[:CTX])[first:CTX - 1])
        with torch.no_grad():
            base = log_softmax(hf(torch.tensor([chunk])).logits[0].numpy()[first:CTX - 1])
        rows = np.arange(len(targets))
        nll.extend((-lp[rows, targets]).tolist())
        base_nll.extend((-base[rows, targets]).tolist())
        kld.extend((np.exp(base) * (base - lp)).sum(axis=-1).tolist())
        agree += int((base.argmax(axis=-1) == lp.argmax(axis=-1)).sum())
        running.append(float(np.exp(np.mean(nll))))
    nll = np.array(nll)
    ppl = float(np.exp(nll.mean()))
    err = float(np.sqrt((np.mean(nll ** 2) - nll.mean() ** 2) / (len(nll) - 1)) * ppl)
    write_json(FIXTURES / "perplexity" / f"{name}.json", {
        "model": name,
        "llama_cpp": llama_cpp.__version__,
        "transformers": transformers.__version__,
        "ctx": CTX,
        "n_tokens": len(tokens),
        "tokens_head": list(tokens[:16]),
        "chunks": n_chunks,
        "chunk_ppl": running,
        "ppl": ppl,
        "ppl_stderr": err,
        "scored": len(nll),
        "kld_dequantized": {
            "mean": float(np.mean(kld)),
            "top1_agreement": agree / len(kld),
            "base_ppl": float(np.exp(np.mean(base_nll))),
        },
    }, indent=1)


def main():
    for name in MODELS:
        run(name)


if __name__ == "__main__":
    main()
