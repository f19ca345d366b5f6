"""The `labelwise` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import json
import sys
import warnings
from enum import IntEnum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Label texts with an LLM against a fixed taxonomy.")

ModelOpt = typer.Option("local", "--model", "-m", help="local | local:PATH.gguf | openai:NAME")
BaseUrlOpt = typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible server URL")
ExamplesOpt = typer.Option(None, "--examples", help="labeled corpus to draw few-shot examples from")
TaxonomyOpt = typer.Option(None, "--taxonomy", help="taxonomy file (YAML label: definition); default: the corpus' labels")
ShotsOpt = typer.Option(8, "--shots", "-k", min=0, help="few-shot examples per prompt")
StrategyOpt = typer.Option("similar", "--strategy", help="similar | diverse | random | fixed")
PromptOpt = typer.Option("fewshot", "--prompt", help="prompt name under prompts/ or a YAML path")
MultiOpt = typer.Option(True, "--multi-label/--single-label", help="allow several labels per text")
NoCacheOpt = typer.Option(False, "--no-cache", help="neither read nor write the response cache")
StructuredOpt = typer.Option("auto", "--structured", help="auto | json_schema | json_object | prompt (openai models)")
TimeoutOpt = typer.Option(60.0, "--timeout", min=0.1, help="seconds to wait for one answer before retrying (openai models)")


class ExitCode(IntEnum):
    """What `labelwise` exits with (listed in the README)."""

    OK = 0
    BELOW_GATE = 1  # eval: a --fail-under gate failed
    BAD_INPUT = 2  # bad arguments, input file, settings or run directory (also: run directory in use)
    FATAL = 3  # the server refused in a way no retry fixes (auth, permission, not found, quota): the run stopped
    ALL_FAILED = 4  # a run ended with every text failed


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {message}", err=True)


@app.callback()
def _root() -> None:
    """Label texts with an LLM against a fixed taxonomy; relabel datasets; score agreement; evaluate prompts."""
    warnings.showwarning = _show_warning  # one line on stderr, not a source location


def _fail(err: Exception) -> None:
    from ._exceptions import FatalTransportError

    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(ExitCode.FATAL if isinstance(err, FatalTransportError) else ExitCode.BAD_INPUT)


def _settings(model, base_url, examples, taxonomy, shots, strategy, prompt, multi_label, structured, **more):
    """The label settings the shared options give (validated: a bad value is a clear error)."""
    from ._settings import LabelSettings

    return LabelSettings(model=model, base_url=base_url, examples=str(examples) if examples else None,
                         taxonomy=str(taxonomy) if taxonomy else None, shots=shots, strategy=strategy, prompt=prompt,
                         multi_label=multi_label, structured=structured, **more)


@app.command()
def label(
    texts: list[str] = typer.Argument(..., help="texts to label ('-' reads one text per line from stdin)"),
    model: str = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    examples: Optional[Path] = ExamplesOpt,
    taxonomy: Optional[Path] = TaxonomyOpt,
    shots: int = ShotsOpt,
    strategy: str = StrategyOpt,
    prompt: str = PromptOpt,
    multi_label: bool = MultiOpt,
    no_cache: bool = NoCacheOpt,
    structured: str = StructuredOpt,
    timeout: float = TimeoutOpt,
) -> None:
    """Label texts; print one JSON object per text."""
    from ._exceptions import LabelwiseError
    from ._labeler import Labeler

    if texts == ["-"]:
        texts = [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    from ._settings import RunOptions

    try:
        settings = _settings(model, base_url, examples, taxonomy, shots, strategy, prompt, multi_label, structured)
        with Labeler.from_settings(settings, RunOptions(cache=not no_cache, timeout=timeout)) as labeler:
            for pred in labeler.label_many(texts):
                typer.echo(json.dumps(pred.model_dump(exclude={"raw"} if pred.status == "ok" else set()), ensure_ascii=False))
    except (LabelwiseError, ValueError) as err:
        _fail(err)


@app.command()
def relabel(
    input: Path = typer.Argument(..., help="dataset to relabel: TSV label<TAB>text, CSV, JSONL or Parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory (resumable)"),
    model: str = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    examples: Optional[Path] = typer.Option(None, "--examples", help="example pool; default: the input itself, leave-one-out"),
    taxonomy: Optional[Path] = TaxonomyOpt,
    shots: int = ShotsOpt,
    strategy: str = StrategyOpt,
    prompt: str = PromptOpt,
    multi_label: bool = MultiOpt,
    text_col: Optional[str] = typer.Option(None, "--text-col", help="text column (CSV/JSONL/Parquet)"),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="label column (CSV/JSONL/Parquet)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip malformed input lines (reported) instead of stopping"),
    header: Optional[bool] = typer.Option(None, "--header/--no-header",
                                          help="TSV: the first line is (not) a header; default: detected"),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="input encoding; default: UTF-8, or GB18030 (guessed)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="label only the first N unique texts"),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="label a seeded random sample of N unique texts"),
    seed: int = typer.Option(0, "--seed"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="requests in flight"),
    rpm: Optional[float] = typer.Option(None, "--rpm", help="client-side requests-per-minute limit"),
    tpm: Optional[float] = typer.Option(None, "--tpm", help="client-side tokens-per-minute limit"),
    items_per_request: int = typer.Option(1, "--items-per-request", min=1, max=100, help="texts labeled per request"),
    prices: Optional[Path] = typer.Option(None, "--prices", help="YAML price table override (USD per 1M tokens)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="call no model: count, show one prompt, estimate tokens and cost"),
    force: bool = typer.Option(False, "--force", help="start over in a run directory made with other settings"),
    triage: str = typer.Option("ensemble", "--triage", help="what ranks label_issues.csv: llm | corpus | ensemble"),
    no_cache: bool = NoCacheOpt,
    structured: str = StructuredOpt,
    timeout: float = TimeoutOpt,
    batch: bool = typer.Option(False, "--batch", help="submit through the Batch API (half price, within 24 h); resumable"),
    no_wait: bool = typer.Option(False, "--no-wait", help="with --batch: submit and return; run again to collect"),
    batch_reask: bool = typer.Option(False, "--batch-reask", help="with --batch: re-ask invalid answers in a follow-up batch, not online"),
    batch_poll: float = typer.Option(5.0, "--batch-poll", min=0.01, help="first poll interval in seconds (grows to 60)"),
    batch_export: Optional[Path] = typer.Option(None, "--batch-export", help="write the batch request file (e.g. for vllm run-batch); call nothing"),
    batch_import: Optional[Path] = typer.Option(None, "--batch-import", help="read batch results (OpenAI or vllm run-batch output) into the run"),
) -> None:
    """Relabel a dataset; write predictions, labels.csv, disagreements.csv, report.json/html, manifest.json."""
    from ._exceptions import LabelwiseError
    from ._settings import RunOptions
    from ._report import agreement_table
    from ._batch import BatchConfig
    from ._runner import RelabelConfig, relabel as run

    bcfg = None
    try:
        modes = [m for m, on in (("api", batch), ("export", batch_export), ("import", batch_import)) if on]
        if len(modes) > 1:
            raise ValueError("use one of --batch, --batch-export, --batch-import")
        bcfg = BatchConfig(mode=modes[0], path=str(batch_export or batch_import or "") or None, wait=not no_wait,
                           reask="batch" if batch_reask else "online", poll_s=batch_poll) if modes else None
        settings = _settings(model, base_url, examples, taxonomy, shots, strategy, prompt, multi_label, structured,
                             seed=seed, items_per_request=items_per_request)
        options = RunOptions(concurrency=concurrency, rpm=rpm, tpm=tpm, cache=not no_cache, timeout=timeout)
        cfg = RelabelConfig(input=str(input), out=str(out), text_col=text_col, label_col=label_col, skip_bad=skip_bad, limit=limit,
                            sample=sample, seed=seed, force=force, prices=str(prices) if prices else None,
                            settings=settings, options=options,
                            header=header, encoding=encoding, batch=bcfg, triage=triage)
        result = run(cfg, dry_run=dry_run)
    except (LabelwiseError, ValueError) as err:
        _fail(err)
    except KeyboardInterrupt:
        if bcfg is None or bcfg.mode != "api":
            raise
        typer.echo(f"interrupted: submitted batches keep running; run the same command again to collect them "
                   f"(labelwise batch status {out})", err=True)
        raise typer.Exit(130)
    if isinstance(result, dict) and "exported" in result:
        typer.echo(f"wrote {result['requests']:,} requests for {result['items']:,} texts to {result['exported']} "
                   f"({result['already_cached']:,} already answered); nothing was called")
        return
    if dry_run:
        typer.echo(f"unique texts: {result['unique_texts']}, to label: {result['to_label']}, requests: {result['requests']}")
        typer.echo(f"model: {result['model']}, prompt: {result['prompt']}")
        typer.echo("--- one rendered prompt ---\n" + result["example_prompt"] + "\n---")
        est = result["estimated_tokens"]
        cost = result["estimated_cost_usd"]
        typer.echo(f"estimated tokens: prompt {est['prompt_tokens']:,}, completion {est['completion_tokens']:,}; "
                   f"cost: {'unknown (no price for this model; see --prices)' if cost is None else f'${cost:.4f}'}"
                   + (" at batch prices" if batch and cost is not None else ""))
        if batch and cost is not None:
            typer.echo(f"online: ${result['estimated_online_cost_usd']:.4f}, batch: ${result['estimated_batch_cost_usd']:.4f}")
        return
    c = result.counts
    skipped = result.skipped_lines
    if skipped:
        shown = ", ".join(str(s["line"]) for s in skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        typer.echo(f"skipped {len(skipped)} malformed input lines (--skip-bad): lines {shown}; see manifest.json", err=True)
    typer.echo(f"run: {result.run_dir}  ({c.selected} texts: {c.resumed} resumed, {c.labeled_now} labeled now, "
               f"{c.failed} failed)  {result.seconds:.1f}s, tokens {sum(result.tokens_this_session.values()):,}")
    if result.batch:
        b = result.batch
        cost = "cost unknown" if b["cost_usd"] is None else f"${b['cost_usd']:.4f} at batch prices"
        done = (f"{len(b['batches'])} batches, {b['requests_submitted']:,} requests" if b["mode"] == "api" else
                f"{b['lines']:,} result lines ({b['lines_already_done']:,} already done, "
                f"{b['lines_not_in_this_run']:,} not for this input)")
        typer.echo(f"batch: {done}, tokens {sum(b['tokens'].values()):,}, {cost}", err=True)
        for note in b.get("notes", []):
            typer.echo(note, err=True)
        if b.get("pending_batches"):
            typer.echo(f"{b['pending_batches']} batches still running; run the same command again to collect them "
                       f"(labelwise batch status {out})", err=True)
    if result.metrics:
        typer.echo(agreement_table(result.metrics))
    t = result.triage
    if t and t["items"]:
        typer.echo(f"likeliest label errors: {result.run_dir}/label_issues.csv (ranked by {t['source']})")
        for note in t["notes"]:
            typer.echo(f"note: {note}", err=True)
    typer.echo(f"review: {result.run_dir}/disagreements.csv, {result.run_dir}/report.html")
    if c.failed:
        typer.echo(f"{c.failed} texts failed; run the same command again to retry them", err=True)
    if c.predictions and not c.ok:
        typer.echo(f"error: every text failed; the first error: {result.first_error}", err=True)
        raise typer.Exit(ExitCode.ALL_FAILED)


@app.command()
def agree(
    gold: Path = typer.Argument(..., help="existing labels: any corpus format, or predictions.jsonl"),
    pred: Path = typer.Argument(..., help="predictions: predictions.jsonl or any corpus format"),
    vs: Optional[Path] = typer.Option(None, "--vs", help="second predictions, compared pairwise against PRED"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a confusion heatmap PNG"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
) -> None:
    """Score predictions against existing labels (multi-label aware), optionally against a second prediction set."""
    from ._exceptions import LabelwiseError
    from ._report import agree as score_files, agreement_table

    try:
        result = score_files(gold, pred, vs, plot=plot, seed=seed)
    except (LabelwiseError, ValueError) as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
        return
    typer.echo(agreement_table(result))
    if result.vs is not None:
        v = result.vs
        typer.echo(f"\n{pred} (a) vs {v.path} (b) on {v.items_compared} items: difference b - a")
        for key, d in v.metrics.items():
            if d.diff is not None:
                band = d.ci
                typer.echo(f"  {key:<22}{d.diff:+.4f}  CI [{band[0]:+.4f}, {band[1]:+.4f}]  p={d.p_value:.4f}" if band else f"  {key:<22}{d.diff:+.4f}")
        mc = v.mcnemar
        typer.echo(f"  McNemar top-1: only b right {mc.b01}, only a right {mc.b10}, p={mc.p_value:.4g} ({mc.method})")
    if plot:
        typer.echo(f"confusion heatmap: {plot}")


@app.command("eval")
def eval_(
    spec: Path = typer.Argument(..., help="eval spec YAML, e.g. evals/policy.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default runs/eval-NAME)"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="run only this variant (repeatable)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="use only the first N held-out texts"),
    fail_under: Optional[list[str]] = typer.Option(None, "--fail-under", help="[VARIANT:]METRIC=VALUE; exit 1 when below"),
) -> None:
    """Run an eval spec: every variant on the held-out split; write a leaderboard."""
    from ._evals import check_gates, leaderboard_markdown, run_eval
    from ._exceptions import LabelwiseError

    try:
        result = run_eval(spec, out=out, only=only, limit=limit)
        failures = check_gates(result, fail_under or [])
    except (LabelwiseError, ValueError) as err:
        _fail(err)
    typer.echo(leaderboard_markdown(result))
    typer.echo(f"written to {result.out}/ (leaderboard.md, leaderboard.html, results.json, agreement_vs_cost.png)")
    if failures:
        for f in failures:
            typer.echo(f"FAIL: {f}", err=True)
        raise typer.Exit(ExitCode.BELOW_GATE)


batch_app = typer.Typer(no_args_is_help=True, help="Batches of a relabel run made with --batch.")
app.add_typer(batch_app, name="batch")


def _batch_table(rows: list[dict]) -> None:
    for r in rows:
        typer.echo(f"#{r['n']}  {r['batch_id'] or '-'}  {r.get('status', '-')}  completed {r.get('completed')} "
                   f"failed {r.get('failed')} of {r['requests']} requests ({r['items']} texts)  local: {r['local']}"
                   + ("  cancel requested" if r.get("cancelled") else ""))


@batch_app.command("status")
def batch_status(run: Path = typer.Argument(..., help="run directory"), base_url: Optional[str] = BaseUrlOpt) -> None:
    """Where each batch of a run stands."""
    from ._batch import batch_status as status
    from ._exceptions import LabelwiseError

    try:
        _batch_table(status(run, base_url))
    except LabelwiseError as err:
        _fail(err)


@batch_app.command("cancel")
def batch_cancel(run: Path = typer.Argument(..., help="run directory"), base_url: Optional[str] = BaseUrlOpt) -> None:
    """Cancel a run's running batches; answers already made are collected by the next run of the command."""
    from ._batch import cancel_batches
    from ._exceptions import LabelwiseError

    try:
        _batch_table(cancel_batches(run, base_url))
    except LabelwiseError as err:
        _fail(err)


review_app = typer.Typer(no_args_is_help=True, help="Review likely label errors in Label Studio and apply the corrections.")
app.add_typer(review_app, name="review")
LsUrlOpt = typer.Option(..., "--url", envvar="LABEL_STUDIO_URL", help="Label Studio URL, e.g. http://localhost:8080")
TopOpt = typer.Option(None, "--top", min=1, help="only the N likeliest errors")
MinScoreOpt = typer.Option(None, "--min-score", min=0.0, max=1.0, help="only items with issue_score >= S")
RunTaxonomyOpt = typer.Option(None, "--taxonomy", help="taxonomy file; default: the one the run used")


def _review_call(fn, *args, **kwargs) -> dict:
    from ._exceptions import LabelwiseError

    try:
        return fn(*args, **kwargs)
    except (LabelwiseError, ValueError) as err:
        _fail(err)


@review_app.command("export")
def review_export(
    run: Path = typer.Argument(..., help="relabel run directory with label_issues.csv"),
    out: Path = typer.Option(..., "--out", "-o", help="Label Studio import file (JSON); the config XML goes beside it"),
    to: str = typer.Option("label-studio", "--to", help="target tool (label-studio)"),
    top: Optional[int] = TopOpt,
    min_score: Optional[float] = MinScoreOpt,
    taxonomy: Optional[Path] = RunTaxonomyOpt,
) -> None:
    """Write the run's likeliest label errors as Label Studio tasks, with the labeling config beside them."""
    from ._review import export_tasks

    if to != "label-studio":
        _fail(ValueError(f"--to {to!r}: only label-studio is supported"))
    r = _review_call(export_tasks, run, out, top=top, min_score=min_score, taxonomy=taxonomy)
    typer.echo(f"{r['tasks']} tasks (of {r['scored']} scored items) -> {r['out']}; labeling config -> {r['config']}")


@review_app.command("push")
def review_push(
    run: Path = typer.Argument(..., help="relabel run directory with label_issues.csv"),
    url: str = LsUrlOpt,
    project: Optional[str] = typer.Option(None, "--project", help="project title (created if missing); default: 'labelwise RUN'"),
    top: Optional[int] = TopOpt,
    min_score: Optional[float] = MinScoreOpt,
    taxonomy: Optional[Path] = RunTaxonomyOpt,
    chunk_size: int = typer.Option(500, "--chunk-size", min=1, help="tasks per import request"),
) -> None:
    """Import the run's tasks into a Label Studio project (key from LABEL_STUDIO_API_KEY); never imports an item twice."""
    from ._review import push_tasks

    r = _review_call(push_tasks, run, url, project, top=top, min_score=min_score, taxonomy=taxonomy, chunk_size=chunk_size)
    typer.echo(f"project {r['project']!r} ({'created' if r['created'] else 'reused'}): {r['imported']} tasks imported, "
               f"{r['already_there']} already there; {r['url']}")


@review_app.command("pull")
def review_pull(
    url: str = LsUrlOpt,
    project: str = typer.Option(..., "--project", help="project title"),
    out: Path = typer.Option(..., "--out", "-o", help="corrections JSONL"),
) -> None:
    """Fetch the submitted annotations of a project as corrections.jsonl."""
    from ._review import pull_corrections

    r = _review_call(pull_corrections, url, project, out)
    typer.echo(f"{r['annotated']} of {r['tasks']} tasks reviewed -> {r['out']}")


@review_app.command("import")
def review_import(
    export: Path = typer.Argument(..., help="JSON export downloaded from the Label Studio UI"),
    out: Path = typer.Option(..., "--out", "-o", help="corrections JSONL"),
) -> None:
    """Read the submitted annotations from a Label Studio JSON export file as corrections.jsonl."""
    from ._review import import_corrections

    r = _review_call(import_corrections, export, out)
    typer.echo(f"{r['annotated']} of {r['tasks']} tasks reviewed -> {r['out']}")


@review_app.command("apply")
def review_apply(
    corpus: Path = typer.Argument(..., help="the labeled dataset the run was made from (left untouched)"),
    corrections: Path = typer.Argument(..., help="corrections.jsonl from review pull / review import"),
    out: Path = typer.Option(..., "--out", "-o", help="corrected dataset, in the corpus's format"),
    log: Optional[Path] = typer.Option(None, "--log", help="change log CSV (default: OUT stem + .changes.csv)"),
    taxonomy: Optional[Path] = typer.Option(None, "--taxonomy", help="taxonomy file; default: the corpus' labels"),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="text column (CSV/JSONL/Parquet)"),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="label column (CSV/JSONL/Parquet)"),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="corpus encoding; default: UTF-8, or GB18030 (guessed)"),
) -> None:
    """Write the corpus with the reviewed labels applied, and a change log; unreviewed items keep their labels."""
    from ._review import apply_corrections

    r = _review_call(apply_corrections, corpus, corrections, out, log=log, taxonomy=taxonomy, text_col=text_col,
                     label_col=label_col, encoding=encoding)
    typer.echo(f"{r['reviewed']} reviewed items: {r['changed']} changed, {r['unchanged']} confirmed; "
               f"{r['items']} items -> {r['out']}; change log -> {r['log']}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
