"""llama.cpp reference fixtures: tokenization, greedy decoding and top log-probabilities.

For each GGUF model fetched by scripts/fetch-models.sh this writes tests/fixtures/llamacpp/<name>.json:

  {"model", "gguf_sha256", "llama_cpp_python",
   "tokenize":     [{"text", "add_bos", "special", "ids"}],
   "greedy":       [{"prompt", "prompt_ids", "n", "ids", "text", "margins", "eog_at"}],
   "top_logprobs": [{"prompt_ids", "k", "top": [[id, logprob], ...],
                     "variants": {"f32_kv": [logprob per top id], "f32_kv_flash": [...]}}],
   "vocab":        {"n_vocab", "bos", "eos", "eot", "eog_ids", "add_bos", "add_bos_metadata"}}

`tokenize` records exactly what llama.cpp's `llama_tokenize` returns: with add_bos=True llama.cpp
adds BOS only where the vocabulary asks for it (tokenizer.ggml.add_bos_token), and with special=True
text such as "<|im_start|>" is matched as a control token instead of being split as plain text.

`greedy` has four prompts: prose, code, a chat turn and a short question. The chat prompt is the
GGUF's own tokenizer.chat_template rendered with jinja2 as transformers does (so SmolLM2's and
Qwen's default system prompts are in it); gemma3-270m has no template and is a base model, so it
gets Gemma's turn markup written out. Prompts are tokenized with special=True and with BOS as the
vocabulary says (add_bos), evaluated as one batch, then each chosen token is evaluated alone
(Llama(n_ctx=1024, n_threads=2, logits_all=True, seed=0)). It decodes 32 tokens by argmax over
the logits llama.cpp computes (no sampling, no repeat penalty) and does not stop at an
end-of-generation token (`eog_at` is the index of the first one, or null). `margins[i]` is the
gap between the best and second-best logit at step i: a step with a margin of a few 1e-3 can
flip under a different but correct summation order. `text` is the
detokenized continuation (control tokens rendered as nothing, as llama.cpp does with special=False;
bytes that do not form valid UTF-8 are replaced by U+FFFD).

`top_logprobs` is log-softmax over the full vocabulary (computed in float64 from llama.cpp's
float32 logits) at the last prompt position, top k sorted by descending log-probability.

Usage: gen_llamacpp.py [MODEL...]   (default: all four)
"""

import ctypes
import sys
import time

import numpy as np

from _common import FIXTURES, GGUF_MODELS, f32, gguf_path, render_chat, sha256_file, write_json

N_GREEDY = 32
TOP_K = 10

TOKENIZE_TEXTS = [
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "Hello",
    "hello HELLO Hello hELLO",
    "café naïve résumé Ångström Straße",
    "e\u0301 vs \u00e9 (combining acute vs precomposed)",
    "日本語のテキストです。",
    "中文分词测试，标点符号！",
    "한국어 텍스트",
    "Ελληνικά и русский текст",
    "مرحبا بالعالم",
    "emoji 😀🎉🚀",
    "family 👩‍👩‍👧‍👦 and 🏳️‍🌈 flags",
    "skin tones 👍🏽 👋🏿 🧑🏻‍💻",
    "a b  c   d    e     f",
    "line1\nline2\n\nline3\n\n\n\nend\n",
    "\ttab\t\tdouble tab\t \t",
    "windows\r\nline\r\n\r\nendings\r",
    "1 12 123 1234 12345 1234567",
    "3.14159, 2,718,281 and 0x1F; v1.2.3-rc4",
    "I'm sure you'll see WE'VE don't can't it's",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'fn main() {\n\tprintln!("{}", 1 + 2);\n}\n',
    "<div class=\"x\">&amp;&lt;</div> // comment /* block */",
    "",
    "   ",
    "\n",
    "a\u00a0b\u200bc\u2028d",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<|endoftext|>",
    "<bos><eos><pad>",
    "<s>[INST] hi [/INST]</s>",
    "The quick brown fox jumps over the lazy dog.",
]

GEMMA_TURN = "<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n"
CHAT_QUESTION = "What is the capital of France? Answer in one sentence."


def prompts_for(name, meta):
    template = meta.get("tokenizer.chat_template")
    messages = [{"role": "user", "content": CHAT_QUESTION}]
    if template:
        chat = render_chat(
            template,
            messages,
            add_generation_prompt=True,
            bos_token=meta["_bos_text"],
            eos_token=meta["_eos_text"],
        )
    else:
        # gemma3-270m's GGUF carries no chat template: use Gemma's documented turn format.
        chat = GEMMA_TURN.format(q=CHAT_QUESTION)
    return [
        ("prose", "Once upon a time, in a small village by the sea, there lived"),
        ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
        ("chat", chat),
        ("question", "Q: What is the boiling point of water at sea level in degrees Celsius?\nA:"),
    ]


def log_softmax(logits):
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def run_model(name):
    import llama_cpp
    from llama_cpp import Llama

    path = gguf_path(name)
    t0 = time.time()
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, logits_all=True, verbose=False, seed=0)
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    meta = dict(llm.metadata)

    def piece(tok, special):
        # llama_token_to_piece with a buffer large enough for any token (llama-cpp-python's own
        # detokenize uses 32 bytes, too few for the long whitespace tokens of code vocabularies).
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(vocab, tok, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1

    def detokenize(ids, special=False):
        return b"".join(piece(t, special) for t in ids).decode("utf-8", errors="replace")

    def token_text(tok):
        return detokenize([tok], special=True) if tok >= 0 else ""

    bos = llm.token_bos()
    eos = llm.token_eos()
    eot = llama_cpp.llama_vocab_eot(vocab)
    eog_ids = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    add_bos_meta = meta.get("tokenizer.ggml.add_bos_token")
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    meta["_bos_text"] = token_text(bos)
    meta["_eos_text"] = token_text(eos)

    tokenize = []
    for text in TOKENIZE_TEXTS:
        for special in (False, True):
            for with_bos in (True, False):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=with_bos, special=special)
                tokenize.append({"text": text, "add_bos": with_bos, "special": special, "ids": list(map(int, ids))})

    greedy, top_logprobs = [], []
    for _kind, prompt in prompts_for(name, meta):
        prompt_ids = list(map(int, llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)))
        llm.reset()
        llm.eval(prompt_ids)
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        lp = log_softmax(last)
        order = np.argsort(-lp, kind="stable")[:TOP_K]
        top_logprobs.append({"prompt_ids": prompt_ids, "k": TOP_K, "top": [[int(i), f32(lp[i])] for i in order]})

        out, margins = [], []
        for _ in range(N_GREEDY):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            best2 = np.argsort(-logits, kind="stable")[:2]
            tok = int(best2[0])
            out.append(tok)
            margins.append(f32(logits[best2[0]] - logits[best2[1]]))
            llm.eval([tok])
        eog_at = next((i for i, t in enumerate(out) if t in set(eog_ids)), None)
        text = detokenize(out)
        greedy.append(
            {
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "n": N_GREEDY,
                "ids": out,
                "text": text,
                "margins": margins,
                "eog_at": eog_at,
            }
        )
        print(f"  [{name}] {_kind}: {len(prompt_ids)} prompt ids -> {text!r} (min margin {min(margins):.4f}, eog_at {eog_at})")

    # llama.cpp disagrees with itself by tenths of a nat on these Q4 models depending on its KV
    # cache type and attention path; record the same top tokens under those configurations so
    # tests can hold exo to llama.cpp's own envelope rather than to one arbitrary configuration.
    for label, extra in (("f32_kv", dict(flash_attn=False, type_k=0, type_v=0)),
                         ("f32_kv_flash", dict(flash_attn=True, type_k=0, type_v=0))):
        alt = Llama(model_path=str(path), n_ctx=1024, n_threads=2, logits_all=True, verbose=False, seed=0, **extra)
        for case in top_logprobs:
            alt.reset()
            alt.eval(case["prompt_ids"])
            lp = log_softmax(np.array(alt.scores[alt.n_tokens - 1], dtype=np.float32))
            case.setdefault("variants", {})[label] = [f32(lp[i]) for i, _ in case["top"]]
        del alt

    fixture = {
        "model": name,
        "gguf_sha256": sha256_file(path),
        "llama_cpp_python": llama_cpp.__version__,
        "tokenize": tokenize,
        "greedy": greedy,
        "top_logprobs": top_logprobs,
        "vocab": {
            "n_vocab": n_vocab,
            "bos": bos,
            "eos": eos,
            "eot": int(eot),
            "eog_ids": eog_ids,
            "add_bos": add_bos,
            "add_bos_metadata": add_bos_meta,
        },
    }
    write_json(FIXTURES / "llamacpp" / f"{name}.json", fixture)
    print(f"  [{name}] done in {time.time() - t0:.1f}s")
    del llm


def main():
    names = sys.argv[1:] or GGUF_MODELS
    for name in names:
        run_model(name)


if __name__ == "__main__":
    main()
