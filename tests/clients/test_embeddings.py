"""Embeddings through the real `openai` and `ollama` clients: /v1/embeddings (base64, the openai
client's default, and float), /api/embed and /api/embeddings, checked against the
sentence-transformers fixture tests/fixtures/embeddings/all-minilm-l6-v2.json and against
`exo embed`; the listing endpoints; every error in each API's shape; metrics; and a flood of
requests queueing or getting 503.

The server serves all-MiniLM-L6-v2 (EMBED) next to SmolLM2 (EXO_MODEL), with one slot and a
queue of one (--parallel 1 --queue-size 1)."""

import base64
import json
import math
import struct
import subprocess
import threading

import httpx
import ollama
import openai

from _harness import EXO_BIN, MODEL, URL, Raises, metric, metrics, run

EMBED = "all-minilm-l6-v2"
with open("../fixtures/embeddings/all-minilm-l6-v2.json") as f:
    FIXTURE = json.load(f)
TEXTS, WANT, TOKENS = FIXTURE["texts"], FIXTURE["vectors"], FIXTURE["tokens"]
DIM, LIMIT = FIXTURE["dim"], FIXTURE["max_seq_length"]
LONG = TEXTS[TOKENS.index(LIMIT)]  # a text the model truncates

oa = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=120)
ol = ollama.Client(host=URL, timeout=120)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def matches_fixture(got, indices):
    """Each vector of `got` matches the fixture's vector of the text at the same position of `indices`."""
    assert len(got) == len(indices), (len(got), len(indices))
    for v, i in zip(got, indices):
        assert len(v) == DIM, (i, len(v))
        c = cosine(v, WANT[i])
        assert c >= 0.9999, f"text {i} {TEXTS[i][:40]!r}: cosine {c}"


def f32(v):
    """The float32 bit patterns of a vector, for exact comparisons."""
    return struct.pack(f"<{len(v)}f", *v)


def post(path, body):
    return httpx.post(f"{URL}{path}", json=body, timeout=120)


def test_models_are_listed_with_what_they_do():
    assert [m.id for m in oa.models.list().data] == [EMBED, MODEL]
    assert oa.models.retrieve(EMBED).id == EMBED
    tags = {m.model: m for m in ol.list().models}
    d = tags[EMBED].details
    assert (d.format, d.family, d.quantization_level, d.parameter_size) == ("safetensors", "bert", "F32", "22.7M"), d
    assert tags[EMBED].size > 80_000_000
    ps = {m.model: m for m in ol.ps().models}
    assert ps[EMBED].context_length == LIMIT and ps[MODEL].context_length > LIMIT
    show = ol.show(EMBED)
    assert show.capabilities == ["embedding"], show.capabilities
    info = show.modelinfo
    assert (info["general.architecture"], info["bert.embedding_length"], info["bert.context_length"]) == ("bert", DIM, LIMIT)
    assert info["bert.pooling_type"] == FIXTURE["pooling"]
    assert ol.show(MODEL).capabilities == ["completion"]


def test_openai_client_default_base64_matches_sentence_transformers():
    before = metrics()
    r = oa.embeddings.create(model=EMBED, input=TEXTS)
    assert r.object == "list" and r.model == EMBED
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    assert all(d.object == "embedding" for d in r.data)
    matches_fixture([d.embedding for d in r.data], range(len(TEXTS)))
    assert r.usage.prompt_tokens == sum(TOKENS) and r.usage.total_tokens == sum(TOKENS), r.usage
    after = metrics()
    for name, want in (("exo_embedding_requests_total", 1), ("exo_embedding_inputs_total", len(TEXTS)), ("exo_embedding_tokens_total", sum(TOKENS))):
        got = metric(after, name, model=EMBED) - metric(before, name, model=EMBED)
        assert got == want, (name, got, want)
    got = metric(after, "exo_requests_total", endpoint="/v1/embeddings", status="200") - metric(before, "exo_requests_total", endpoint="/v1/embeddings", status="200")
    assert got == 1, got


def test_base64_is_the_float_vector_in_little_endian_f32():
    body = {"model": EMBED, "input": TEXTS[:3]}
    floats = post("/v1/embeddings", {**body, "encoding_format": "float"}).json()
    packed = post("/v1/embeddings", {**body, "encoding_format": "base64", "user": "ignored"}).json()
    for f, p in zip(floats["data"], packed["data"]):
        assert isinstance(p["embedding"], str) and isinstance(f["embedding"], list)
        assert base64.b64decode(p["embedding"]) == f32(f["embedding"])
    # The client decodes base64 itself and asks for floats only when told to.
    decoded = oa.embeddings.create(model=EMBED, input=TEXTS[:3]).data
    explicit = oa.embeddings.create(model=EMBED, input=TEXTS[:3], encoding_format="float").data
    for d, e, f in zip(decoded, explicit, floats["data"]):
        assert f32(d.embedding) == f32(e.embedding) == f32(f["embedding"])


def test_one_string_and_truncation():
    r = oa.embeddings.create(model=EMBED, input=TEXTS[1], encoding_format="float", dimensions=DIM)
    matches_fixture([r.data[0].embedding], [1])
    assert r.usage.prompt_tokens == TOKENS[1]
    r = oa.embeddings.create(model=EMBED, input=[LONG])
    assert r.usage.prompt_tokens == LIMIT


def test_vectors_equal_exo_embed():
    # The same texts through `exo embed` (one kernel thread, as the server runs).
    out = subprocess.run([EXO_BIN, "embed", EMBED, "-t", "1", *TEXTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ours = json.loads(out.stdout)
    served = oa.embeddings.create(model=EMBED, input=TEXTS).data
    for i, (a, b) in enumerate(zip(ours, served)):
        assert max(abs(x - y) for x, y in zip(a, b.embedding)) < 1e-6, i


def test_openai_errors():
    cases = [
        ({"input": []}, "input", "empty"),
        ({"input": [[101, 7592, 102]]}, "input", "token ids"),
        ({"input": [101, 7592]}, "input", "token ids"),
        ({"input": ["a", 3]}, "input[1]", "must be a string"),
        ({"input": ["a"] * 2049}, "input", "2048"),
        ({"input": "a", "dimensions": 128}, "dimensions", "384"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "int8"),
    ]
    for args, param, needle in cases:
        with Raises(openai.BadRequestError) as e:
            oa.embeddings.create(model=EMBED, **args)
        err = e.value.body
        assert err["type"] == "invalid_request_error" and err["param"] == param and needle in err["message"], (args, err)
    r = post("/v1/embeddings", {"model": EMBED})
    assert r.status_code == 400 and "missing field `input`" in r.json()["error"]["message"], r.text
    with Raises(openai.NotFoundError) as e:
        oa.embeddings.create(model="no-such-model", input="a")
    assert e.value.body["code"] == "model_not_found"


def test_each_kind_of_model_refuses_the_other_kinds_requests():
    with Raises(openai.BadRequestError) as e:
        oa.embeddings.create(model=MODEL, input="a")
    assert e.value.body["param"] == "model" and MODEL in e.value.body["message"] and "not embeddings" in e.value.body["message"]
    with Raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}])
    assert EMBED in e.value.body["message"] and "embedding model" in e.value.body["message"]
    with Raises(openai.BadRequestError) as e:
        oa.completions.create(model=EMBED, prompt="hi")
    assert "embedding model" in e.value.body["message"]
    for call in (lambda: ol.generate(EMBED, "hi"), lambda: ol.generate(EMBED, ""), lambda: ol.chat(EMBED, [{"role": "user", "content": "hi"}])):
        with Raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 400 and "embedding model" in e.value.error, e.value.error
    for call in (lambda: ol.embed(MODEL, "a"), lambda: ol.embeddings(MODEL, "a")):
        with Raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 400 and "not embeddings" in e.value.error, e.value.error
    r = post("/v1/messages", {"model": EMBED, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["type"] == "error", r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and "embedding model" in r.json()["error"]["message"]


def test_ollama_embed_matches_sentence_transformers():
    r = ol.embed(EMBED, TEXTS, keep_alive="5m", options={"num_ctx": 512})
    assert r.model == EMBED and r.load_duration == 0 and r.total_duration > 0
    matches_fixture(r.embeddings, range(len(TEXTS)))
    assert r.prompt_eval_count == sum(TOKENS), r.prompt_eval_count
    one = ol.embed(EMBED, TEXTS[2], dimensions=DIM)
    matches_fixture(one.embeddings, [2])
    assert one.prompt_eval_count == TOKENS[2]
    # As Ollama: an empty input loads the model and embeds nothing; an empty text in a list is a text.
    assert ol.embed(EMBED, "").embeddings == []
    assert ol.embed(EMBED, []).embeddings == []
    matches_fixture(ol.embed(EMBED, [""]).embeddings, [TEXTS.index("")])


def test_ollama_truncate():
    assert ol.embed(EMBED, [TEXTS[0], LONG]).prompt_eval_count == TOKENS[0] + LIMIT
    assert ol.embed(EMBED, TEXTS[:3], truncate=False).prompt_eval_count == sum(TOKENS[:3])
    with Raises(ollama.ResponseError) as e:
        ol.embed(EMBED, [TEXTS[0], LONG], truncate=False)
    err = e.value.error
    assert e.value.status_code == 400 and err.startswith("input[1]: ") and f"limit of {LIMIT}" in err, err
    n = int(err.split(": ")[1].split()[0])
    assert n > LIMIT, err


def test_ollama_legacy_embeddings():
    r = ol.embeddings(EMBED, TEXTS[1])
    matches_fixture([r.embedding], [1])
    assert ol.embeddings(EMBED, "").embedding == []


def test_ollama_errors():
    for body, needle in (
        ({"input": 3}, "input: must be a string or a list of strings"),
        ({"input": ["a", None]}, "input[1]: must be a string"),
        ({"input": "a", "dimensions": 10}, "dimensions: 10 is not supported"),
        ({"input": "a", "truncate": "no"}, "truncate: invalid type"),
    ):
        r = post("/api/embed", {"model": EMBED, **body})
        assert r.status_code == 400 and r.json()["error"].startswith(needle), (body, r.text)
    r = post("/api/embeddings", {"model": EMBED, "prompt": ["a"]})
    assert r.status_code == 400 and r.json()["error"].startswith("prompt: invalid type"), r.text
    with Raises(ollama.ResponseError) as e:
        ol.embed("no-such-model", "a")
    assert e.value.status_code == 404 and "no-such-model" in e.value.error


def test_a_flood_queues_one_and_refuses_the_rest_with_retry_after():
    # Texts at the token limit keep the one slot busy for about a second; of five requests sent
    # at once, one computes, one waits in the queue, and the others get 503 at once.
    body = {"model": EMBED, "input": [LONG] * 8, "encoding_format": "base64"}
    answers = []

    def send():
        answers.append(post("/v1/embeddings", body))

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in answers if r.status_code == 200]
    busy = [r for r in answers if r.status_code == 503]
    assert len(ok) + len(busy) == 5 and len(ok) >= 2 and busy, [r.status_code for r in answers]
    for r in busy:
        assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "server_busy", r.text
    for r in ok:
        assert r.json()["usage"]["prompt_tokens"] == 8 * LIMIT
    r = post("/api/embed", {"model": EMBED, "input": "after the flood"})
    assert r.status_code == 200, r.text


run(globals())
