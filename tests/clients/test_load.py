"""A bounded load run on loopback: 500 streamed completions with random prompt and output lengths
from 24 concurrent clients, one in ten hanging up midway. Every answer that is read to its end is
a 200 with a finish reason, the server keeps serving, and afterwards every KV block is free again
and the server's resident memory is where it was after a warm-up run of the same kind.

The server runs with a small KV pool (--kv-memory), so requests also wait for blocks and get
preempted; the pool bounds what the cache itself can hold, so growth beyond it would be a leak.
"""

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor

import httpx

from _harness import MODEL, URL, metric, metrics, run

WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees".split()
PID = int(os.environ["EXO_PID"])


def rss_mib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one(seed):
    """One streamed completion; returns ("done", finish_reason) or ("hung_up", chunks_read)."""
    rng = random.Random(seed)
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80)))
    body = {"model": MODEL, "prompt": prompt, "max_tokens": rng.randint(1, 32), "temperature": 0.7, "seed": seed, "stream": True}
    hang_up = rng.random() < 0.1
    with httpx.Client(timeout=300) as client:
        with client.stream("POST", f"{URL}/v1/completions", json=body) as r:
            assert r.status_code == 200, (r.status_code, r.read())
            chunks, finish = 0, None
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                assert "error" not in event, event
                chunks += 1
                finish = event["choices"][0].get("finish_reason") or finish
                if hang_up and chunks >= 2:
                    return "hung_up", chunks
            assert finish in ("stop", "length"), finish
            return "done", finish


def load_run(seeds):
    with ThreadPoolExecutor(24) as pool:
        return list(pool.map(one, seeds))


def settled():
    """Metrics once nothing runs and every block is back (hung-up requests end at the next step)."""
    import time

    deadline = time.time() + 30
    while True:
        m = metrics()
        free, total = metric(m, "exo_kv_blocks_free", model=MODEL), metric(m, "exo_kv_blocks_total", model=MODEL)
        if metric(m, "exo_requests_running", model=MODEL) == 0 and metric(m, "exo_queue_depth", model=MODEL) == 0 and free == total:
            return m
        assert time.time() < deadline, f"blocks not back: {free} of {total} free"
        time.sleep(0.05)


def test_five_hundred_requests_leave_no_trace():
    warm = load_run(range(60))
    assert sum(1 for kind, _ in warm if kind == "done") > 40
    settled()
    baseline = rss_mib()
    results = load_run(range(1000, 1500))
    done = [r for r in results if r[0] == "done"]
    hung_up = [r for r in results if r[0] == "hung_up"]
    assert len(done) + len(hung_up) == 500
    assert 20 <= len(hung_up) <= 90, len(hung_up)
    m = settled()
    grown = rss_mib() - baseline
    print(f"load: {len(done)} answered, {len(hung_up)} hung up; RSS {baseline:.0f} MiB -> +{grown:.1f} MiB; "
          f"preemptions {metric(m, 'exo_preemptions_total', model=MODEL):.0f}")
    assert grown < 16, f"resident memory grew by {grown:.1f} MiB over the run"
    # /health answers 503 while the model loads, before the harness starts the run.
    errors = {labels: v for (name, labels), v in m.items() if name == "exo_requests_total"
              and dict(labels).get("status") != "200" and dict(labels).get("endpoint") != "/health"}
    assert not errors, f"error responses: {errors}"
    # Still serving.
    r = httpx.post(f"{URL}/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


if __name__ == "__main__":
    run(globals())
