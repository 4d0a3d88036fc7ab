"""Helpers shared by the fixture generators in this folder.

Paths, JSON writing and the Jinja environment that renders chat templates the way Hugging Face
`transformers` does (sandboxed, trim_blocks + lstrip_blocks, `raise_exception`, `strftime_now`,
a `tojson` filter that keeps non-ASCII text and does not HTML-escape).
"""

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# GGUF models fetched by scripts/fetch-models.sh (name -> file name inside the models dir).
GGUF_MODELS = [
    "smollm2-135m-instruct",
    "gemma3-270m",
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
]

# Hugging Face (sentence-transformers) directories fetched by scripts/fetch-models.sh.
HF_MODELS = ["all-minilm-l6-v2"]


def models_dir() -> Path:
    return Path(os.environ.get("EXO_HOME", Path.home() / ".exo")) / "models"


def gguf_path(name: str) -> Path:
    p = models_dir() / f"{name}.gguf"
    if not p.is_file():
        raise SystemExit(f"missing model {p}: run scripts/fetch-models.sh all")
    return p


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def f32(x) -> float:
    """A float32 value as a short JSON number that parses back to the same float32."""
    return float(f"{float(x):.9g}")


def write_json(path: Path, obj, indent=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, ensure_ascii=False, indent=indent, separators=(",", ":") if indent is None else None)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size:,} bytes)")


# ---------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------

def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers replaces Jinja's built-in `tojson` (which HTML-escapes <, >, & and ') with a
    # plain json.dumps that keeps non-ASCII characters.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def jinja_env():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def render_chat(template: str, messages, *, add_generation_prompt: bool, bos_token: str, eos_token: str, tools=None) -> str:
    return jinja_env().from_string(template).render(
        messages=messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def gguf_metadata(path: Path, keys, token_keys=()):
    """Reads scalar/string metadata values from a GGUF file with the `gguf` package. For each key in
    `token_keys` (a token id such as tokenizer.ggml.bos_token_id) also returns the text of that
    vocabulary entry as "<key>:text" (None when the key is absent)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key in list(keys) + list(token_keys):
        field = reader.fields.get(key)
        out[key] = None if field is None else field.contents()
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    for key in token_keys:
        tid = out[key]
        out[f"{key}:text"] = None if tid is None else bytes(tokens.parts[tokens.data[tid]]).decode("utf-8")
    return out


def exo_bin() -> str:
    """The exo binary: $EXO_BIN, or a `fast` build made now."""
    import subprocess

    if os.environ.get("EXO_BIN"):
        return os.environ["EXO_BIN"]
    subprocess.run(["cargo", "build", "--profile", "fast", "-p", "exo-cli"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "fast" / "exo")


def llama_greedy(llm, prompt_ids, n):
    """n greedy tokens from a llama_cpp.Llama (logits_all) after prompt_ids, with each step's
    margin between the two most likely tokens (near-ties are where engines may differ)."""
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    ids, margins = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top2 = np.sort(row)[-2:]
        tok = int(np.argmax(row))
        ids.append(tok)
        margins.append(float(top2[1] - top2[0]))
        llm.eval([tok])
    return ids, margins
