"""Shared setup of the client tests: where the server is, which model, and a small runner.

The Rust test crates/exo-cli/tests/serve.rs starts `exo serve` and runs each test_*.py script
with the venv from scripts/setup-clients.sh, passing:
  EXO_URL      the server's base URL (http://127.0.0.1:PORT)
  EXO_MODEL    the name of the served SmolLM2 model
  EXO_API_KEY  the key the server requires (only for servers started with one)
  EXO_BIN      the `exo` binary (for comparing with `exo run`)
A script runs every function named test_* in order and exits non-zero if any failed.
"""

import os
import re
import sys
import time
import traceback

import httpx

URL = os.environ["EXO_URL"]
MODEL = os.environ["EXO_MODEL"]
API_KEY = os.environ.get("EXO_API_KEY")
EXO_BIN = os.environ.get("EXO_BIN", "")


def wait_ready(timeout=60.0):
    """Blocks until GET /health answers 200 (the models are loaded)."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{URL}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{URL}/health did not become ready in {timeout} s")
        time.sleep(0.05)


def metrics():
    """GET /metrics parsed into {(name, frozenset(labels)): value}."""
    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    r = httpx.get(f"{URL}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    out = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})? (\S+)', line)
        assert m, f"not Prometheus text: {line!r}"
        labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(parsed, name, **labels):
    """The value of one series (0 if absent)."""
    return parsed.get((name, frozenset(labels.items())), 0.0)


def expect_status(exc_info_value, status):
    assert getattr(exc_info_value, "status_code", None) == status, f"expected HTTP {status}, got {exc_info_value!r}"


class Raises:
    """`with Raises(SomeError) as e:` ... asserts the block raises SomeError, kept in e.value."""

    def __init__(self, kind):
        self.kind = kind
        self.value = None

    def __enter__(self):
        return self

    def __exit__(self, ty, value, tb):
        if ty is None:
            raise AssertionError(f"expected {self.kind.__name__}, nothing was raised")
        if not issubclass(ty, self.kind):
            return False
        self.value = value
        return True


def run(namespace):
    """Runs every test_* function of `namespace` (a module's globals()) in definition order."""
    wait_ready()
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    failed = []
    for t in tests:
        start = time.time()
        try:
            t()
            print(f"ok   {t.__name__} ({time.time() - start:.1f} s)", flush=True)
        except Exception:
            failed.append(t.__name__)
            print(f"FAIL {t.__name__}\n{traceback.format_exc()}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(tests)} failed: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"all {len(tests)} passed", flush=True)
