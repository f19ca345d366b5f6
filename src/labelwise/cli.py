"""The `labelwise` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import json
import sys
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


@app.callback()
def _root() -> None:
    """Label texts with an LLM against a fixed taxonomy; relabel datasets; score agreement; evaluate prompts."""


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


def _labeler_options(model, base_url, examples, taxonomy, shots, strategy, prompt, multi_label, no_cache, structured) -> dict:
    from ._labeler import DEFAULT_CORPUS

    return dict(model=model, base_url=base_url, examples=examples or DEFAULT_CORPUS, taxonomy=taxonomy, shots=shots,
                strategy=strategy, prompt=prompt, multi_label=multi_label, cache=not no_cache, structured=structured)


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
) -> None:
    """Label texts; print one JSON object per text."""
    from ._exceptions import LabelwiseError
    from ._labeler import Labeler

    if texts == ["-"]:
        texts = [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    opts = _labeler_options(model, base_url, examples, taxonomy, shots, strategy, prompt, multi_label, no_cache, structured)
    try:
        labeler = Labeler(opts.pop("model"), examples=opts.pop("examples"), taxonomy=opts.pop("taxonomy"),
                          prompt=opts.pop("prompt"), **opts)
        for pred in labeler.label_many(texts):
            typer.echo(json.dumps(pred.model_dump(exclude={"raw"} if pred.status == "ok" else set()), ensure_ascii=False))
    except (LabelwiseError, ValueError) as err:
        _fail(err)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
