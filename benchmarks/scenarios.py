"""The benchmark scenarios of issue 6: each returns table rows of achieved vs a limit measured in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.fake_openai import FakeOpenAIServer, Scenario

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "policy_labels.tsv"
TAXONOMY = ROOT / "prompts" / "policy_taxonomy.yaml"
CLI = Path(sys.executable).with_name("labelwise")


@dataclass
class Row:
    """One line of the results table; `verdict` is PASS/MISS for rows with a target, else empty."""

    scenario: str
    setting: str
    achieved: str
    limit: str
    ratio: str = ""
    verdict: str = ""
    notes: str = ""


@dataclass
class Ctx:
    """Run-wide settings: quick mode and a scratch directory."""

    quick: bool
    tmp: Path
    memo: dict[Any, Any] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def pct(x: float) -> str:
    """A ratio as a whole percentage."""
    return f"{x:.0%}"


# --------------------------------------------------------------------------- helpers


@cache
def corpus():
    """The bundled corpus (unique items)."""
    from labelwise import load_corpus

    return load_corpus(DATA)


def items(n: int) -> list[tuple[str, str]]:
    """`n` distinct (id, text) pairs from the corpus, suffixed copies once it runs out."""
    from labelwise import item_id

    base = corpus().items
    out = [(it.id, it.text) for it in base[:n]]
    for i in range(len(out), n):
        text = f"{base[i % len(base)].text} #{i}"
        out.append((item_id(text), text))
    return out


def held_out(n: int, seed: int = 0):
    """A seeded sample of `n` corpus items and the example pool without them."""
    c = corpus()
    test = random.Random(seed).sample(c.items, n)
    return test, c.without(it.id for it in test)


def server_stats(base_url: str) -> dict[str, Any]:
    """The fake server's counters, from its `/_stats` endpoint (works in-process and across processes)."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats", timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def server_process(scenario: Scenario) -> Iterator[str]:
    """The fake server in its own process (own GIL, own core): yields its base URL."""
    cmd = [sys.executable, "-m", "benchmarks.fake_openai", "--port", "0", "--scenario", scenario.model_dump_json()]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if "http" not in line:
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@dataclass
class Proc:
    """A finished subprocess: wall seconds, peak RSS in MB, exit code and output."""

    wall: float
    rss_mb: float
    rc: int
    out: str
    err: str


# A small parent for measured commands: a child's ru_maxrss starts at its parent's peak RSS (vfork/fork + exec),
# so a command started straight from this process (1 GB once the embedded model is loaded) would inherit that.
_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
            "print(f'\\n@measure {time.perf_counter() - t} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
            "file=sys.stderr); sys.exit(rc)")


def run(cmd: list[str], env: dict[str, str] | None = None, *, measure: bool = True) -> Proc:
    """Run a command; its wall time and peak RSS, via a small measuring parent (or directly, wall time only)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        full = [sys.executable, "-c", _MEASURE, *cmd] if measure else cmd
        rc = subprocess.call(full, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        wall, rss_mb = time.perf_counter() - t0, 0.0
        out.seek(0), err.seek(0)
        text = err.read().decode()
        if measure and "@measure " in text:
            text, _, tail = text.rpartition("\n@measure ")
            wall, rss_mb = float(tail.split()[0]), int(tail.split()[1]) / 1024
        return Proc(wall, rss_mb, rc, out.read().decode(), text)


def relabel_cmd(input: Path | str, out: Path, base_url: str, *extra: str) -> list[str]:
    """`labelwise relabel` against the fake server."""
    return [str(CLI), "relabel", str(input), "--model", "openai:fake", "--base-url", base_url, "--out", str(out), *extra]


def manifest(run_dir: Path) -> dict[str, Any]:
    """A relabel run's manifest."""
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def check(p: Proc, what: str) -> None:
    """Raise with the tail of stderr when a subprocess failed."""
    if p.rc != 0:
        raise RuntimeError(f"{what} exited {p.rc}: {p.err[-2000:]}")


async def bare_rate(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    """Requests/s of a bare AsyncOpenAI loop sending labelwise's exact request bodies, no labeling around it."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="no-key", max_retries=0)
    todo = iter(bodies)

    async def worker() -> None:
        for body in todo:
            await client.chat.completions.create(**body)

    await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "warm-up"}])
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = len(bodies) / (time.perf_counter() - t0)
    await client.close()
    return rate


def request_bodies(labeler: Any, todo: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The chat-completions bodies `labeler` sends for `todo` (schema, logprobs and top_logprobs included)."""
    return [labeler.model.chat_body(labeler.plan_request([q])[0]) for q in todo]


async def label_run(labeler, todo: list[tuple[str, str]]) -> tuple[list, float]:
    """Predictions and wall seconds of `alabel_items` (the labeler is closed afterwards)."""
    t0 = time.perf_counter()
    try:
        preds = await labeler.alabel_items(todo)
    finally:
        seconds = time.perf_counter() - t0
        await labeler.aclose()
    return preds, seconds


def fake_labeler(base_url: str, **options: Any):
    """A labeler on the fake server, no cache, the corpus' label set."""
    import openai  # noqa: F401  (loaded here, outside the timings, should labelwise import it on its first request)

    from labelwise import Labeler

    return Labeler("openai:fake", base_url=base_url, cache=False, **{"examples": corpus(), "shots": 0, **options})


def top1(preds: list, gold: list) -> float:
    """Top-1 agreement (first predicted label in gold; a failed prediction counts as wrong)."""
    from labelwise._metrics import score

    labels = sorted(set(corpus().labels))
    return score([list(g.labels) for g in gold], [p.labels if p.status == "ok" else [] for p in preds], labels,
                 n_boot=0).top1_accuracy


def local_run(ctx: Ctx, n: int, *, shots: int, ipr: int = 1, prompt: str = "fewshot") -> tuple[list, float, list]:
    """Embedded-model predictions on `n` held-out texts (memoised per setting within a run): preds, seconds, gold."""
    from labelwise import Labeler

    key = ("local", n, shots, ipr, prompt)
    if key not in ctx.memo:
        test, pool = held_out(n)
        extra = {"taxonomy": str(TAXONOMY)} if prompt != "fewshot" else {}
        labeler = Labeler("local", examples=pool, shots=shots, items_per_request=ipr, prompt=prompt, cache=False,
                          concurrency=1, **extra)
        if "local-warm" not in ctx.memo:  # weights and the label vocabulary load on the first call; keep that out
            t0 = time.perf_counter()
            labeler.label(pool.items[0].text)
            ctx.memo["local-warm"] = time.perf_counter() - t0
        before = scorer_stats(labeler.model)
        preds, seconds = asyncio.run(label_run(labeler, [(it.id, it.text) for it in test]))
        after = scorer_stats(labeler.model)
        ctx.memo[key] = (preds, seconds, test)
        ctx.memo[key + ("stats",)] = {k: v - before.get(k, 0) for k, v in after.items()}
    return ctx.memo[key]


def scorer_stats(model: Any) -> dict[str, int]:
    """The embedded model's running token counts (prompt, evaluated after KV reuse, label-trie), if it keeps them."""
    return dict(model.scorer().stats) if hasattr(model, "scorer") else {}


# --------------------------------------------------------------------------- scenarios


def s1_throughput(ctx: Ctx) -> list[Row]:
    """Labeling throughput at 100 ms latency vs min(C/latency, a bare AsyncOpenAI loop) at the same concurrency."""
    latency, reps, rows = 0.1, (1 if ctx.quick else 2), []
    with server_process(Scenario(latency_s=latency)) as url:  # own process: the client keeps this one's GIL
        renderer = fake_labeler(url)
        for c in (1, 8, 64, 256):
            n = max(20, 2 * c) if ctx.quick else min(max(60, 5 * c), 1500)
            todo = items(n)
            bodies = request_bodies(renderer, todo)
            bare = got = 0.0
            cpu = {"bare": float("inf"), "labelwise": float("inf")}  # client CPU ms per item: robust to other load
            failed = 0
            for _ in range(reps):  # interleaved, best of each: other load on the box hits both alike
                labeler = fake_labeler(url, concurrency=c)
                t0 = time.process_time()
                bare = max(bare, asyncio.run(bare_rate(url, bodies, c)))
                t1 = time.process_time()
                preds, seconds = asyncio.run(label_run(labeler, todo))
                cpu = {"bare": min(cpu["bare"], (t1 - t0) / n * 1e3), "labelwise": min(cpu["labelwise"], (time.process_time() - t1) / n * 1e3)}
                got, failed = max(got, n / seconds), max(failed, sum(p.status != "ok" for p in preds))
            limit = min(c / latency, bare)
            rows.append(Row("1 throughput, 100 ms latency", f"concurrency {c}, {n} items", f"{got:.1f} items/s",
                            f"{limit:.1f}/s", pct(got / limit), verdict(got >= 0.9 * limit and not failed),
                            f"C/latency {c / latency:.0f}/s, bare AsyncOpenAI {bare:.1f}/s (best of {reps}); client CPU "
                            f"{cpu['labelwise']:.2f} ms/item vs bare {cpu['bare']:.2f}; failed {failed}"))
        rows.append(_s1_whole_process(ctx, url, renderer, latency, reps))
    return rows


def _s1_whole_process(ctx: Ctx, url: str, renderer: Any, latency: float, reps: int, c: int = 64) -> Row:
    """A whole `labelwise relabel` process (start-up, labeling, report, triage) over ~7,000 labeled texts at
    concurrency `c`, no cache, vs a bare AsyncOpenAI loop sending the same prompts to the same server."""
    n = 1000 if ctx.quick else 7000
    gold = {it.id: it.labels for it in corpus().items}
    base = corpus().items
    todo = items(n)
    data = ctx.tmp / f"s1-{n}.tsv"
    data.write_text("".join(f"{lab}\t{text}\n" for k, (iid, text) in enumerate(todo)
                            for lab in gold.get(iid) or base[k % len(base)].labels), encoding="utf-8")
    bodies = request_bodies(renderer, todo)
    bare = got = 0.0
    proc = None
    for rep in range(reps):  # interleaved, best of each
        bare = max(bare, asyncio.run(bare_rate(url, bodies, c)))
        out = ctx.tmp / f"s1-run-{rep}"
        p = run(relabel_cmd(data, out, url, "--shots", "0", "--concurrency", str(c), "--no-cache"))
        check(p, f"relabel {n} texts")
        if n / p.wall > got:
            got, proc, m = n / p.wall, p, manifest(out)
    limit = min(c / latency, bare)
    return Row("1 throughput, 100 ms latency", f"whole `relabel` process, concurrency {c}, {n} texts", f"{got:.1f} items/s",
               f"{limit:.1f}/s", pct(got / limit), verdict(got >= 0.9 * limit and not m["counts"]["failed"]),
               f"process {proc.wall:.1f} s (in arelabel {m['seconds']:.1f} s), {proc.rss_mb:.0f} MB, no cache, shots 0, "
               f"with report and triage; bare AsyncOpenAI {bare:.1f}/s (best of {reps}); failed {m['counts']['failed']}; "
               f"{busy_now()}")


def s2_rate_limit(ctx: Ctx) -> list[Row]:
    """A 600 rpm server (429 + Retry-After): labelwise with rpm=600 client-side vs without."""
    n, c, latency, rows = (60 if ctx.quick else 200), 32, 0.1, []
    burst = 10  # the fake server's bucket holds one second's worth
    limit = n / ((n - burst) / 10 + latency)  # fastest possible: the burst, then 10/s, then one latency
    for rpm in (600.0, None):
        with FakeOpenAIServer(Scenario(latency_s=latency, rpm=600, seed=1)) as srv:
            preds, seconds = asyncio.run(label_run(fake_labeler(srv.base_url, concurrency=c, rpm=rpm), items(n)))
            st = server_stats(srv.base_url)
        ok = sum(p.status == "ok" for p in preds)
        got = ok / seconds
        rows.append(Row("2 rate limit 600 rpm", f"{'client rpm=600' if rpm else 'no client limit'}, C={c}, {n} items",
                        f"{got:.2f} items/s", f"{limit:.2f}/s", pct(got / limit), verdict(got >= 0.9 * limit and ok == n),
                        f"10/s after a {burst}-request burst; 429s taken: {st['rate_limited']}, requests "
                        f"{st['completions']}, failed {n - ok}"))
    return rows


def s3_faults(ctx: Ctx) -> list[Row]:
    """5% HTTP 500s and 5% garbage answers: every item must end labeled; extra requests counted."""
    n = 100 if ctx.quick else 500
    with FakeOpenAIServer(Scenario(latency_s=0.02, error_rate=0.05, garbage_rate=0.05, seed=3)) as srv:
        labeler = fake_labeler(srv.base_url, concurrency=32)
        preds, seconds = asyncio.run(label_run(labeler, items(n)))
        st = server_stats(srv.base_url)
    ok = sum(p.status == "ok" for p in preds)
    extra = st["completions"] - n
    return [Row("3 faults: 5% 500s + 5% garbage", f"C=32, {n} items", f"{ok}/{n} labeled", "100%", pct(ok / n),
                verdict(ok == n), f"extra requests {extra} (+{extra / n:.1%}): {st['errors']} 500s, {st['garbage']} garbage, "
                f"{labeler.stats['reasks']} re-asks; {n / seconds:.0f} items/s")]


def s4_items_per_request(ctx: Ctx) -> list[Row]:
    """Items per request 1/5/10/20: prompt tokens per label (fake server, 4 shots) and agreement (embedded model)."""
    n_tok, n_agree = (40, 10) if ctx.quick else (200, 40)
    test, pool = held_out(n_tok, seed=4)
    tokens: dict[int, float] = {}
    with FakeOpenAIServer(Scenario(seed=4)) as srv:
        for ipr in (1, 5, 10, 20):
            labeler = fake_labeler(srv.base_url, examples=pool, shots=4, items_per_request=ipr, concurrency=16)
            preds, _ = asyncio.run(label_run(labeler, [(it.id, it.text) for it in test]))
            tokens[ipr] = sum(p.usage.get("prompt_tokens", 0) for p in preds) / len(preds)
    rows, agree1 = [], None
    for ipr, tok in tokens.items():
        preds, seconds, gold = local_run(ctx, n_agree, shots=4, ipr=ipr)
        agree, failed = top1(preds, gold), sum(p.status != "ok" for p in preds)
        agree1 = agree if agree1 is None else agree1
        rows.append(Row("4 items/request, 4 shots", f"{ipr} per request", f"{tok:.0f} prompt tok/label",
                        f"{tokens[1]:.0f} at 1/request", pct(tok / tokens[1]), "",
                        f"fake server, {n_tok} texts; embedded model: top-1 {agree:.2f} on {n_agree} held-out "
                        f"(1/request: {agree1:.2f}), {n_agree / seconds:.2f} texts/s, failed {failed}"))
    return rows


def s5_cache_rerun(ctx: Ctx) -> list[Row]:
    """Whole-corpus rerun from a warm cache: items/s of the whole `labelwise relabel` process."""
    cache_dir, limit = ctx.tmp / "s5-cache", (["--limit", "1500"] if ctx.quick else [])
    env = {"LABELWISE_CACHE_DIR": str(cache_dir)}
    with FakeOpenAIServer(Scenario()) as srv:
        cold = run(relabel_cmd(DATA, ctx.tmp / "s5-cold", srv.base_url, "--shots", "0", "--concurrency", "64", *limit), env)
        check(cold, "cold relabel")
        warm = run(relabel_cmd(DATA, ctx.tmp / "s5-warm", srv.base_url, "--shots", "0", *limit), env)
        check(warm, "warm relabel")
        calls = server_stats(srv.base_url)["completions"]
    m = manifest(ctx.tmp / "s5-warm")
    n = m["counts"]["selected"]
    rate = n / warm.wall
    return [Row("5 cache-hit rerun (whole process)", f"{n} texts, shots 0", f"{rate:,.0f} items/s", "5,000 items/s",
                pct(rate / 5000), verdict(rate >= 5000),
                f"process {warm.wall:.2f} s (in arelabel {m['seconds']:.2f} s), {warm.rss_mb:.0f} MB; model calls "
                f"{m['model_calls']} (server total {calls}); cold run {n / cold.wall:.0f} items/s")]


def s6_startup(ctx: Ctx) -> list[Row]:
    """`labelwise --help` wall time, median of 5."""
    times = []
    for _ in range(5):
        p = run([str(CLI), "--help"], measure=False)
        check(p, "labelwise --help")
        times.append(p.wall)
    med = statistics.median(times)
    return [Row("6 start-up", "labelwise --help, median of 5", f"{med:.3f} s", "< 0.5 s", pct(med / 0.5), verdict(med < 0.5),
                f"min {min(times):.3f} s, max {max(times):.3f} s")]


def prompt_floor(prompts: list[str]) -> tuple[float, float]:
    """The floor of the embedded model's speed: llama.cpp evaluating each whole prompt from an empty KV cache, one
    logits row (`logits_all=False`), nothing else. Prompt tokens/s and prompt tokens per text."""
    from llama_cpp import Llama

    from labelwise._models import _silence_llama_log, default_gguf

    _silence_llama_log()
    llm = Llama(model_path=default_gguf(), n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=os.cpu_count() or 1,
                logits_all=False, verbose=False)
    tokens, seconds = 0, 0.0
    try:
        for p in prompts:
            ids = llm.tokenize(p.encode("utf-8"), add_bos=True, special=False)
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            seconds += time.perf_counter() - t0
            tokens += len(ids)
    finally:
        llm.close()
    return tokens / seconds, tokens / len(prompts)


def s7_local_model(ctx: Ctx) -> list[Row]:
    """The embedded model at K = 0, 4, 8: texts/s and top-1 agreement on held-out texts, vs a linear baseline; and
    texts/s at K = 4, 8 vs the floor measured in the same run (prompt evaluation alone, target >= 80% at K=8)."""
    from labelwise import Labeler
    from labelwise._evals import _baseline

    n, rows = (8 if ctx.quick else 40), []
    test, pool = held_out(n)
    base = _baseline(pool, test, sorted(corpus().labels))
    base_agree = top1([_Ok(b) for b in base], test)
    speed: dict[int, tuple[float, dict[str, int]]] = {}
    for k in (0, 4, 8):
        prompt = "zeroshot_defs" if k == 0 else "fewshot"
        preds, seconds, gold = local_run(ctx, n, shots=k, prompt=prompt)
        speed[k] = (n / seconds, ctx.memo[("local", n, k, 1, prompt, "stats")])
        agree, failed = top1(preds, gold), sum(p.status != "ok" for p in preds)
        tokens = sum(p.usage.get("prompt_tokens", 0) for p in preds) / n
        rows.append(Row("7 embedded model", f"K={k} ({prompt}{', similar' if k else ', definitions'})",
                        f"top-1 {agree:.2f}, {n / seconds:.2f} texts/s", f"TF-IDF SVM top-1 {base_agree:.2f}",
                        pct(agree / base_agree) if base_agree else "", "",
                        f"{n} held-out texts, {tokens:.0f} prompt tok/text, failed {failed}; "
                        f"first call (load + label vocab) {ctx.memo.get('local-warm', 0):.1f} s"))
    for k in (4, 8):
        renderer = Labeler("local", examples=pool, shots=k, cache=False)
        tok_s, per_text = prompt_floor([renderer.render(it.text, id=it.id).text for it in test])
        floor = tok_s / per_text
        rate, st = speed[k]
        reuse = f"{st['evaluated_tokens'] / st['prompts']:.0f} evaluated after prefix reuse + {st['scored_tokens'] / st['prompts']:.0f} " \
                "label-trie tokens per text" if st.get("prompts") else "no prefix reuse"
        rows.append(Row("7 embedded model speed", f"K={k} (fewshot, similar)", f"{rate:.2f} texts/s", f"{floor:.2f} texts/s",
                        pct(rate / floor), verdict(rate >= 0.8 * floor) if k == 8 else "",
                        f"floor = {tok_s:.0f} prompt tok/s (llama.cpp, logits_all=False, same run) / {per_text:.0f} "
                        f"tok/text; {reuse}; target >= 80% at K=8; {busy_now()}"))
    return rows


def busy_now() -> str:
    """The 1-minute load average (other work shares these cores)."""
    return f"load average {os.getloadavg()[0]:.2f}"


@dataclass
class _Ok:
    """A minimal stand-in for an ok prediction (for scoring the baseline)."""

    labels: list[str]
    status: str = "ok"


def s8_memory(ctx: Ctx) -> list[Row]:
    """Peak RSS and rows/s of `labelwise relabel` at two sizes (shots 0, C=64, 10 items a request); KB per row above a base.

    The base and the memory per row come from the two sizes (a line through both peaks). The sizes are 100,000 and
    1,000,000 rows (quick: 5,000 and 20,000), or `LABELWISE_BENCH_S8_ROWS=N1,N2` (1M rows take ~40 min at 430 rows/s).
    """
    env_sizes = os.environ.get("LABELWISE_BENCH_S8_ROWS")
    sizes = sorted(int(x) for x in (env_sizes or ("5000,20000" if ctx.quick else "100000,1000000")).split(","))
    lines = [ln for ln in DATA.read_text(encoding="utf-8").splitlines() if "\t" in ln]
    ipr = 10
    rows: list[Row] = []
    peaks: list[tuple[int, float]] = []
    with FakeOpenAIServer(Scenario()) as srv:
        for k, n in enumerate(sizes):
            big = ctx.tmp / f"big-{n}.tsv"
            with open(big, "w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(f"{lines[i % len(lines)]} #{i}\n")
            out = ctx.tmp / f"s8-{k}"
            p = run(relabel_cmd(big, out, srv.base_url, "--concurrency", "64", "--items-per-request", str(ipr), "--shots", "0"),
                    {"LABELWISE_CACHE_DIR": str(ctx.tmp / f"s8-cache-{k}")})
            check(p, f"relabel {n} rows")
            m = manifest(out)
            big.unlink()
            peaks.append((n, p.rss_mb))
            rows.append(Row("8 peak memory", f"{n:,} rows, shots 0, C=64, {ipr}/request", f"{p.rss_mb:,.0f} MB", "", "", "",
                            f"max RSS of the process; wall {p.wall:.0f} s ({n / p.wall:.0f} rows/s), "
                            f"{m['model_calls']} requests, failed {m['counts']['failed']}"))
        if len(peaks) >= 2:
            (n0, r0), (n1, r1) = peaks[0], peaks[-1]
            per_row_kb = (r1 - r0) * 1024 / (n1 - n0)
            base = r0 - per_row_kb * n0 / 1024
            rows.append(Row("8 memory per row", f"{n0:,} -> {n1:,} rows", f"{per_row_kb:.2f} KB/row", "<= 1.5 KB/row",
                            pct(per_row_kb / 1.5), verdict(per_row_kb <= 1.5),
                            f"above a base of {base:,.0f} MB (the line through both peaks)"))
        if not ctx.quick and not env_sizes:  # default shots: the first 20,000 rows (the selector doubles the run time)
            big = ctx.tmp / "big-shots.tsv"
            big.write_text("".join(f"{lines[i % len(lines)]} #{i}\n" for i in range(20_000)), encoding="utf-8")
            out = ctx.tmp / "s8-shots"
            p = run(relabel_cmd(big, out, srv.base_url, "--concurrency", "64", "--items-per-request", str(ipr),
                                "--examples", str(DATA)), {"LABELWISE_CACHE_DIR": str(ctx.tmp / "s8-cache-shots")})
            check(p, "relabel 20,000 rows, 8 shots")
            m = manifest(out)
            rows.append(Row("8 peak memory", f"20,000 rows, 8 shots from the corpus, C=64, {ipr}/request",
                            f"{p.rss_mb:,.0f} MB", "< 1,024 MB", pct(p.rss_mb / 1024), verdict(p.rss_mb < 1024),
                            f"max RSS of the process; wall {p.wall:.0f} s ({20_000 / p.wall:.0f} rows/s), "
                            f"{m['model_calls']} requests, failed {m['counts']['failed']}"))
    return rows


async def _server_load(base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    """n schema requests from `concurrency` workers on one SDK client: (requests/s, this process's CPU share)."""
    import openai

    fmt = {"type": "json_schema", "json_schema": {"name": "labels", "strict": True, "schema": {
        "type": "object", "properties": {"labels": {"type": "array", "items": {"enum": ["spam", "ham"]}}}}}}
    left = n

    async def ask(c: openai.AsyncOpenAI) -> None:
        r = await c.chat.completions.create(model="fake", messages=[{"role": "user", "content": "Sentence: spam"}],
                                            response_format=fmt)
        json.loads(r.choices[0].message.content)

    async def worker(c: openai.AsyncOpenAI) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await ask(c)

    async with openai.AsyncOpenAI(base_url=base_url, api_key="t", max_retries=0) as c:
        await asyncio.gather(*(ask(c) for _ in range(concurrency)))  # open the connections
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return n / elapsed, cpu / elapsed


def s9_fake_server(ctx: Ctx) -> list[Row]:
    """The fake server is not the bottleneck: its CPU per request vs the SDK client's, in its own process."""
    n, c = (400 if ctx.quick else 1500), 64
    with server_process(Scenario()) as url:
        cpu0 = server_stats(url)["cpu_s"]
        rps, client_share = asyncio.run(_server_load(url, n, c))
        server_share = (server_stats(url)["cpu_s"] - cpu0) * rps / n
    with FakeOpenAIServer(Scenario()) as srv:  # in a thread of this process, as the tests run it
        cpu0 = srv.cpu_s()
        thread_rps, _ = asyncio.run(_server_load(srv.base_url, n, c))
        thread_share = (srv.cpu_s() - cpu0) * thread_rps / n
    return [Row("9 fake server", f"{n} requests, C={c}, own process", f"{rps:.0f} req/s",
                "server CPU < 50% of client's", pct(server_share / client_share), verdict(server_share < 0.5 * client_share),
                f"server {server_share / rps * 1e6:.0f} us/req, SDK client {client_share / rps * 1e6:.0f} us/req; "
                f"in a thread: {thread_rps:.0f} req/s, server {thread_share / thread_rps * 1e6:.0f} us/req")]


def s10_bootstrap(ctx: Ctx) -> list[Row]:
    """Agreement metrics with 1,000 bootstrap resamples on 6,000 multi-label items (what `relabel` reports)."""
    import numpy as np

    from labelwise._metrics import score

    n, labels = 6000, [f"L{i}" for i in range(27)]
    rng = np.random.default_rng(0)
    gold = [sorted(set(rng.choice(labels, rng.integers(1, 4), replace=False).tolist())) for _ in range(n)]
    pred = [g[:1] if rng.random() < 0.5 else rng.choice(labels, 1).tolist() for g in gold]
    times = []
    for _ in range(1 if ctx.quick else 3):
        t0 = time.perf_counter()
        score(gold, pred, labels, n_boot=1000)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return [Row("10 bootstrap CIs", f"{n:,} items, 27 labels, 1,000 resamples", f"{best:.2f} s", "< 15 s",
                pct(best / 15), verdict(best < 15), f"best of {len(times)}; all: {', '.join(f'{t:.2f}' for t in times)} s")]


def _rank_figures(scores: list[float], corrupted: list[bool]) -> tuple[float, float, float]:
    """precision@N, recall@2N (N = number corrupted) and AUROC of an issue score at finding the corrupted items."""
    from sklearn.metrics import roc_auc_score

    n = sum(corrupted)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep input order
    hits = [corrupted[i] for i in order]
    return sum(hits[:n]) / n, sum(hits[: 2 * n]) / n, float(roc_auc_score(corrupted, scores))


def s11_label_noise(ctx: Ctx) -> list[Row]:
    """Injected label noise: 10% of the eval split's labels replaced; rankings (a)-(d) at finding them (embedded model)."""
    from labelwise import RelabelConfig, load_taxonomy, relabel
    from labelwise import LabelSettings, RunOptions
    from labelwise._triage import calibration_of, triage

    split = json.loads((ROOT / "evals" / "policy.split.json").read_text(encoding="utf-8"))["ids"]
    n = 40 if ctx.quick else len(split)
    index = corpus().by_id()
    test = [index[i] for i in split[:n]]
    pool = corpus().without(split)  # the eval's example pool: the whole split held out
    labels = list(load_taxonomy(TAXONOMY).labels)
    rng = random.Random(9)
    bad = set(rng.sample(range(n), n // 10))
    noisy = [[rng.choice([lab for lab in labels if lab not in it.labels])] if k in bad else list(it.labels)
             for k, it in enumerate(test)]
    data, pool_path, out = ctx.tmp / "s11-input.tsv", ctx.tmp / "s11-pool.tsv", ctx.tmp / "s11-run"
    data.write_text("".join(f"{lab}\t{it.text}\n" for it, labs in zip(test, noisy) for lab in labs), encoding="utf-8")
    pool_path.write_text("".join(f"{lab}\t{it.text}\n" for it in pool.items for lab in it.labels), encoding="utf-8")
    t0 = time.perf_counter()
    result = relabel(RelabelConfig(input=str(data), out=str(out), settings=LabelSettings(
        model="local", examples=str(pool_path), shots=8, strategy="similar"), options=RunOptions(concurrency=1)),
        progress=False)
    seconds = time.perf_counter() - t0
    rows = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in rows}
    rows = [by_id[it.id] for it in test]
    corrupted = [k in bad for k in range(n)]
    pos = {it.id: k for k, it in enumerate(test)}

    def scores_of(t) -> list[float]:
        s = [0.0] * n
        for r in t.rows:
            s[pos[r.id]] = r.issue_score
        return s

    # (a) today's ordering: disagreements (top-1 not an existing label) surest first, then agreements least sure first
    today = [(0.5 + 0.5 * (r["confidence"] or 0)) if r["status"] == "ok" and r["labels"][0] not in r["gold"]
             else 0.5 - 0.5 * (r["confidence"] or 0) for r in rows]
    pool_items = [(it.id, it.text, it.labels) for it in pool.items]
    ranked = {"(a) disagreements, surest first": (today, "today's relabel output"),
              "(b) cleanlab on TF-IDF + LR": (scores_of(triage(rows, labels, pool_items, "corpus")), "")}
    llm = triage(rows, labels, pool_items, "llm")
    ranked["(c) cleanlab on the LLM, calibrated"] = (scores_of(llm), f"source used: {llm.source}")
    issues = __import__("pandas").read_csv(out / "label_issues.csv", encoding="utf-8-sig")
    default = {i: s for i, s in zip(issues["id"], issues["issue_score"])}
    t = result["triage"]
    ranked["(d) ensemble (default: label_issues.csv)"] = ([default[it.id] for it in test],
                                                          f"source used: {t['source']}; LLM weight per fold "
                                                          f"{t['ensemble_llm_weight_per_fold']}")
    figures = {name: _rank_figures(s, corrupted) for name, (s, _) in ranked.items()}
    anchor = max(figures["(a) disagreements, surest first"][2], figures["(b) cleanlab on TF-IDF + LR"][2])
    out_rows = []
    for name, (p_at_n, r_at_2n, auroc) in figures.items():
        is_default = name.startswith("(d)")
        out_rows.append(Row("11 label noise (10% of eval split)", name,
                            f"P@{len(bad)} {p_at_n:.2f}, R@{2 * len(bad)} {r_at_2n:.2f}, AUROC {auroc:.3f}",
                            f"AUROC > {anchor:.3f}, P@N >= 0.60" if is_default else "",
                            f"{auroc / anchor:.0%}" if is_default else "",
                            verdict(auroc > anchor and p_at_n >= 0.6) if is_default else "", ranked[name][1]))
    clean_cal = calibration_of([r.get("label_probs") if r["status"] == "ok" else None for r in rows],
                               [list(it.labels) for it in test], labels, [it.id for it in test])
    failed = sum(r["status"] != "ok" for r in rows)
    if clean_cal:
        out_rows.append(Row("11 label noise (10% of eval split)", "calibration of the LLM's label_probs (clean labels)",
                            f"ECE {clean_cal['ece']:.3f} (raw {clean_cal['ece_raw']:.3f})", "ECE <= 0.05",
                            pct(clean_cal["ece"] / 0.05), verdict(clean_cal["ece"] <= 0.05),
                            f"{clean_cal['method']}, cross-fitted over {clean_cal['cross_fitted_folds']} folds, "
                            f"{clean_cal['items']} items (a perfectly calibrated model: ECE "
                            f"{clean_cal['ece_if_perfectly_calibrated']:.3f} on as many); "
                            f"relabel of {n} texts took {seconds:.0f} s, failed {failed}"))
    else:
        out_rows.append(Row("11 label noise (10% of eval split)", "calibration of the LLM's label_probs", "no label_probs",
                            "ECE <= 0.05", "", "MISS", f"the model gave no per-label probabilities; failed {failed}"))
    return out_rows


SCENARIOS: dict[int, Callable[[Ctx], list[Row]]] = {
    1: s1_throughput, 2: s2_rate_limit, 3: s3_faults, 4: s4_items_per_request,
    5: s5_cache_rerun, 6: s6_startup, 7: s7_local_model, 8: s8_memory, 9: s9_fake_server, 10: s10_bootstrap,
    11: s11_label_noise,
}
