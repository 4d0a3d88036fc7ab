"""Randomized tokenization fixtures from llama.cpp, to catch edge cases the hand-picked texts miss.

For each GGUF model fetched by scripts/fetch-models.sh this writes
tests/fixtures/llamacpp_fuzz/<name>.json:

  {"model", "llama_cpp_python", "seed", "cases": [{"text", "special", "ids"}]}

Texts are drawn with a fixed seed from a pool that mixes ASCII words and punctuation, digits,
every kind of whitespace llama.cpp's pre-tokenizers treat specially (\\r, \\n, \\t, U+00A0,
U+2028, U+3000, ...), contractions, CJK, Hangul, emoji with ZWJ and variation selectors,
combining marks, unassigned and private-use codepoints, C0/C1 controls, and the texts of special
tokens (<|im_start|>, <end_of_turn>, </s>, runs of newlines, ...). `ids` is llama-cpp-python's
`tokenize(text.encode(), add_bos=False, special=special)`.

Usage: gen_tokenize_fuzz.py [MODEL...]   (default: all four)
"""

import random
import sys
import time

from _common import FIXTURES, GGUF_MODELS, gguf_path, write_json

SEED = int(__import__("os").environ.get("FUZZ_SEED", "20240611"))
N_CASES = int(__import__("os").environ.get("FUZZ_CASES", "400"))

POOL = [
    "the", "The", " the", "Hello", "world", "HTTP", "naïve", "Ångström", "straße", "x", "Q", "ab", "don", "I",
    "'s", "'S", "'t", "'re", "'VE", "'m", "'ll", "'d", "'", "\"", "`",
    "0", "7", "12", "123", "4567", "3.14", "1,000", "٣", "²", "½", "Ⅻ",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2028", "\u3000", "\u200b", "\u2009", "\u0085",
    ".", ",", "!", "?", ";", ":", "-", "--", "...", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "|", "$", "+", "=", "^",
    "~", "#", "@", "%", "&", "*", "_", "«", "»", "—", "•", "€", "£", "©", "™", "→",
    "日本語", "中文", "。", "，", "！", "한국어", "ไทย", "Ελληνικά", "русский", "עברית", "مرحبا", "हिन्दी",
    "😀", "🎉", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "\ufe0f", "\u200d", "e\u0301", "\u0301", "a\u0308",
    "\u0378", "\U000e0001", "\ue000", "\U0010fffd", "\x00", "\x01", "\x7f", "\x9f", "\ufeff", "\ufffd",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>",
    "<s>", "</s>", "<unk>", "<mask>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<repo_name>", "<table>",
    "<td>", "[multimodal]", "<unused0>", "<|im_start", "im_end|>", "<<", ">>",
    "def", "fn", "return", "    ", "        ", "\t\t", "0x1F", "==", "!=", "->", "=>", "//", "/*", "*/", "#include",
]


def random_text(rng):
    n = rng.choice([1, 1, 2, 3, 5, 8, 13, 21])
    parts = [rng.choice(POOL) for _ in range(n)]
    sep = rng.choice(["", "", " ", "\n"])
    return sep.join(parts)


def run_model(name):
    import llama_cpp
    from llama_cpp import Llama

    t0 = time.time()
    llm = Llama(model_path=str(gguf_path(name)), vocab_only=True, verbose=False)
    rng = random.Random(SEED)
    cases = []
    for _ in range(N_CASES):
        text = random_text(rng)
        for special in (False, True):
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            cases.append({"text": text, "special": special, "ids": list(map(int, ids))})
    fixture = {"model": name, "llama_cpp_python": llama_cpp.__version__, "seed": SEED, "cases": cases}
    write_json(FIXTURES / "llamacpp_fuzz" / f"{name}.json", fixture)
    print(f"  [{name}] {len(cases)} cases in {time.time() - t0:.1f}s")


def main():
    for name in sys.argv[1:] or GGUF_MODELS:
        run_model(name)


if __name__ == "__main__":
    main()
