"""Reference sentence embeddings from `sentence-transformers` for the BERT embedding models.

Writes tests/fixtures/embeddings/<name>.json for each sentence-transformers directory fetched by
scripts/fetch-models.sh (today: all-minilm-l6-v2), loaded from the local directory, offline:

  {"model", "sentence_transformers", "dim", "max_seq_length", "pooling", "normalize",
   "texts": [...],
   "tokens": [...],       # tokens each text used after truncation, [CLS] and [SEP] included
   "vectors": [[...]],    # model.encode(texts) as one batch: the model's own pooling + Normalize
   "variants": [{"pooling", "normalize", "texts", "vectors"}]}

`variants` are the same Transformer module under other Pooling modes and without Normalize
(built from the same directory), so the pooling code paths the model itself does not use are
checked against sentence-transformers too. Vectors are float32 rounded to 6 significant digits:
far below what a cosine test can see, and it keeps the file small.

Usage: gen_embeddings.py [NAME...]
"""

import os
import sys

from _common import FIXTURES, HF_MODELS, models_dir, write_json

# A paragraph whose sentences are cycled into texts longer than the 256-token limit, so truncation
# decides the result, and longer than the 512 position embeddings, so the limit must be enforced.
SENTENCES = [
    "Local inference keeps private documents on the machine that owns them.",
    "A retrieval pipeline splits each file into chunks, embeds them, and stores the vectors.",
    "At query time the question is embedded the same way and compared by cosine similarity.",
    "Small encoders such as MiniLM answer in milliseconds even on a laptop processor.",
    "Batching many chunks into one forward pass amortises the cost of every weight read.",
    "Tokenizers split rare words into several word pieces, so length in words is only a hint.",
]


def cycled(n_words: int) -> str:
    words = " ".join(SENTENCES).split()
    return " ".join(words[i % len(words)] for i in range(n_words))


TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "  Leading and trailing   whitespace,\tTabs and\nnewlines  ",
    "café naïve résumé Ångström Straße",
    "日本語のテキストです。中文分词测试",
    "emoji 😀🎉 and a family 👩‍👩‍👧‍👦",
    "[CLS] special [SEP] tokens typed as text [MASK]",
    "fn main() { println!(\"{}\", 3.14159 * 2); } // code",
    " ",
    "",
    cycled(300),
    cycled(700),
]

# Pooling modes checked besides the model's own (the texts: a short, a CJK and a truncated one).
VARIANTS = [("cls", False), ("max", False), ("mean", False)]
VARIANT_TEXTS = [TEXTS[1], TEXTS[5], TEXTS[11]]


def round6(row):
    return [float(f"{float(x):.6g}") for x in row]


def run(name):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    path = models_dir() / name
    if not (path / "modules.json").is_file():
        raise SystemExit(f"missing {path}: run scripts/fetch-models.sh all")
    model = SentenceTransformer(str(path), device="cpu")
    transformer, pooling = model[0], model[1]
    assert isinstance(transformer, Transformer) and isinstance(pooling, Pooling), model
    normalize = any(isinstance(m, Normalize) for m in model)

    features = transformer.preprocess(TEXTS)
    tokens = [int(n) for n in features["attention_mask"].sum(dim=1)]
    vectors = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)

    variants = []
    for mode, norm in VARIANTS:
        modules = [transformer, Pooling(pooling.get_embedding_dimension(), pooling_mode=mode)]
        if norm:
            modules.append(Normalize())
        variant = SentenceTransformer(modules=modules, device="cpu")
        out = variant.encode(VARIANT_TEXTS, batch_size=len(VARIANT_TEXTS), convert_to_numpy=True)
        variants.append({"pooling": mode, "normalize": norm, "texts": VARIANT_TEXTS, "vectors": [round6(v) for v in out]})

    write_json(
        FIXTURES / "embeddings" / f"{name}.json",
        {
            "model": name,
            "sentence_transformers": sentence_transformers.__version__,
            "dim": int(vectors.shape[1]),
            "max_seq_length": int(model.max_seq_length),
            "pooling": pooling.pooling_mode,
            "normalize": normalize,
            "texts": TEXTS,
            "tokens": tokens,
            "vectors": [round6(v) for v in vectors],
            "variants": variants,
        },
    )


def main():
    for name in sys.argv[1:] or HF_MODELS:
        run(name)


if __name__ == "__main__":
    main()
