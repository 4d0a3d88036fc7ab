"""Reference ids for Hugging Face `tokenizer.json` tokenization, from the `tokenizers` package.

Writes tests/fixtures/hf_tokenizer/<name>.json for each Hugging Face model directory fetched by
scripts/fetch-models.sh (today: all-minilm-l6-v2):

  {"model", "tokenizers", "vocab_size",
   "cases": [{"text", "add_special_tokens", "split_special_tokens", "ids", "decoded", "decoded_with_special"}]}

`ids` is `Tokenizer.encode(text, add_special_tokens=...)` with `encode_special_tokens` set to
`split_special_tokens` (True: texts like "[SEP]" are tokenized as plain text); `decoded` is
`decode(ids, skip_special_tokens=True)` and `decoded_with_special` the same with False. Padding and
truncation configured in tokenizer.json are switched off first: exo encodes prompts whole.

Usage: gen_hf_tokenizer.py [NAME...]
"""

import sys

from _common import FIXTURES, HF_MODELS, models_dir, write_json

TEXTS = [
    "Hello world",
    "  Hello,   WORLD!  ",
    "The quick brown fox jumps over the lazy dog.",
    "unbelievably tokenization-friendly",
    "café naïve résumé Ångström Straße",
    "日本語のテキストです。中文分词测试",
    "emoji 😀🎉 and 👩‍👩‍👧‍👦",
    "[CLS] hi [SEP] there [MASK]",
    "line1\nline2\ttab\r\nend",
    "3.14159, 2,718,281 and 0x1F",
    "",
]


def run(name):
    import tokenizers

    path = models_dir() / name / "tokenizer.json"
    if not path.is_file():
        raise SystemExit(f"missing {path}: run scripts/fetch-models.sh all")
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    cases = []
    for text in TEXTS:
        for split in (False, True):
            tok.encode_special_tokens = split
            for add in (True, False):
                ids = tok.encode(text, add_special_tokens=add).ids
                cases.append(
                    {
                        "text": text,
                        "add_special_tokens": add,
                        "split_special_tokens": split,
                        "ids": ids,
                        "decoded": tok.decode(ids, skip_special_tokens=True),
                        "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
                    }
                )
    tok.encode_special_tokens = False
    write_json(
        FIXTURES / "hf_tokenizer" / f"{name}.json",
        {"model": name, "tokenizers": tokenizers.__version__, "vocab_size": tok.get_vocab_size(True), "cases": cases},
        indent=1,
    )


def main():
    for name in sys.argv[1:] or HF_MODELS:
        run(name)


if __name__ == "__main__":
    main()
