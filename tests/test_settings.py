"""Settings: two strict halves, one fingerprint, a variant as a partial update, one construction path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from labelwise import Labeler, LabelSettings, RelabelConfig, RunOptions, SpecError, load_corpus, relabel
from labelwise._evals import load_spec
from labelwise._settings import split_options

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9/v1"  # nothing is sent in these tests


def test_the_two_halves_are_strict_and_disjoint() -> None:
    assert not set(LabelSettings.model_fields) & set(RunOptions.model_fields)
    with pytest.raises(ValidationError, match="shots"):
        LabelSettings(shots=65)
    with pytest.raises(ValidationError, match="concurrency"):
        LabelSettings(concurrency=4)  # a run option is not a label setting
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['shotz'\]"):
        split_options({"shots": 2, "concurrency": 3, "shotz": 1})
    assert split_options({"shots": 2, "concurrency": 3}) == ({"shots": 2}, {"concurrency": 3})


def test_updated_validates_like_the_original() -> None:
    base = LabelSettings(shots=4, prompt="fewshot_defs")
    assert base.updated(shots=2) == LabelSettings(shots=2, prompt="fewshot_defs")
    with pytest.raises(ValidationError, match="strategy"):
        base.updated(strategy="nearest")


def test_run_options_never_change_the_fingerprint_and_label_settings_do(corpus) -> None:
    def fp(settings: LabelSettings, options: RunOptions) -> dict:
        with Labeler.from_settings(settings, options, pool=corpus) as lab:
            return lab.fingerprint

    s = LabelSettings(model="openai:x", base_url=UNREACHABLE, shots=2)
    a = fp(s, RunOptions())
    assert a == fp(s, RunOptions(concurrency=64, rpm=100, timeout=5, max_reasks=0, cache=False))
    assert a != fp(s.updated(shots=3), RunOptions())
    assert a != fp(s.updated(temperature=0.5), RunOptions())
    json.dumps(a)  # the form run.json keeps


def test_keyword_path_and_settings_path_build_the_same_labeler(corpus) -> None:
    with Labeler("openai:x", base_url=UNREACHABLE, examples=corpus, shots=3, concurrency=2, strategy="diverse") as a, \
            Labeler.from_settings(LabelSettings(model="openai:x", base_url=UNREACHABLE, shots=3, strategy="diverse"),
                                  RunOptions(concurrency=2), pool=corpus) as b:
        assert a.fingerprint == b.fingerprint
        assert a.options == b.options
        text = corpus.items[5].text
        assert a.render(text).text == b.render(text).text


def test_from_settings_defaults_to_the_bundled_corpus_and_reads_a_given_pool(tmp_path: Path, corpus) -> None:
    with Labeler.from_settings(LabelSettings(model="openai:x", base_url=UNREACHABLE)) as lab:
        assert len(lab.pool) == len(corpus)
    small = tmp_path / "pool.tsv"
    small.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[:30]), encoding="utf-8")
    with Labeler.from_settings(LabelSettings(model="openai:x", base_url=UNREACHABLE, examples=str(small))) as lab:
        assert len(lab.pool) == 30


def test_library_relabel_uses_the_input_as_its_pool_like_the_cli(tmp_path: Path, corpus, fake_server) -> None:
    """No `examples`: the input itself, leave-one-out (it once defaulted to the bundled corpus in the library)."""
    server = fake_server()
    data = tmp_path / "in.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[100:110]), encoding="utf-8")
    ids = {it.id for it in load_corpus(data).items}
    result = relabel(RelabelConfig(input=str(data), out=str(tmp_path / "run"),
                                   settings=LabelSettings(model="openai:x", base_url=server.base_url, shots=2)),
                     progress=False)
    m = result.manifest
    assert m["examples"]["path"] == "input (leave-one-out)" and m["examples"]["pool_size"] == 10
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 10
    for r in rows:
        assert len(r["examples"]) == 2 and set(r["examples"]) <= ids - {r["id"]}


def test_changing_only_run_options_resumes_the_run(cli, tmp_path: Path, corpus, fake_server) -> None:
    server = fake_server()
    data = tmp_path / "in.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[:8]), encoding="utf-8")
    base = ("relabel", data, "--out", tmp_path / "run", "--model", "openai:x", "--base-url", server.base_url, "--shots", "2")
    assert cli(*base, "--concurrency", "1").exit_code == 0
    calls = server.stats.completions
    again = cli(*base, "--concurrency", "7", "--timeout", "9", "--rpm", "600")
    assert again.exit_code == 0, again.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert m["counts"]["resumed"] == 8 and server.stats.completions == calls
    refused = cli(*base[:-1], "3")
    assert refused.exit_code == 2 and "settings.shots: 2 -> 3" in refused.stderr


def _spec(tmp_path: Path, body: str) -> Path:
    (tmp_path / "evals").mkdir(exist_ok=True)
    path = tmp_path / "evals" / "s.yaml"
    path.write_text("name: s\ndataset: data.tsv\nsplit: {file: evals/split.json, size: 3}\n" + body, encoding="utf-8")
    return path


def test_a_variant_is_a_partial_update_of_the_spec_settings(tmp_path: Path) -> None:
    spec, _ = load_spec(_spec(tmp_path, "settings: {shots: 2, model: 'openai:m', base_url: 'http://h/v1'}\n"
                                        "grid: {prompt: [fewshot, fewshot_defs]}\n"
                                        "variants:\n  - {shots: 0, prompt: zeroshot_defs}\n  - {temperature: 0.7}\n"))
    variants = spec.all_variants()
    assert list(variants) == ["fewshot/similar/k2/openai:m", "fewshot_defs/similar/k2/openai:m",
                              "zeroshot_defs/zero-shot/openai:m", "fewshot/similar/k2/openai:m/temperature=0.7"]
    assert all(v.base_url == "http://h/v1" for v in variants.values())
    assert variants["fewshot_defs/similar/k2/openai:m"] == LabelSettings(
        shots=2, model="openai:m", base_url="http://h/v1", prompt="fewshot_defs")
    assert variants["fewshot/similar/k2/openai:m/temperature=0.7"].temperature == 0.7


@pytest.mark.parametrize("body, where", [
    ("variants:\n  - {shots: 99}\n", "variants.0.shots"),
    ("variants:\n  - {concurrency: 3}\n", "variants.0.concurrency"),
    ("settings: {strategy: nearest}\n", "settings.strategy"),
    ("variants:\n  - {examples: other.tsv}\n", "examples"),
])
def test_a_bad_variant_or_setting_is_refused_naming_it(tmp_path: Path, body: str, where: str) -> None:
    with pytest.raises(SpecError, match=where.replace(".", r"\.")) as err:
        load_spec(_spec(tmp_path, body))
    assert "s.yaml" in str(err.value)
