"""The answer format in one place: the prompt file owns the re-ask text and the answer cue (so its `name@hash`
covers them), one word names the format, and the older spellings users typed keep working."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from pydantic import ValidationError

from labelwise import Labeler, ModelAnswer, PromptError, load_prompt, load_taxonomy
from labelwise._answer import (LABEL_JOINER, batch_confidence, batch_keys, confidence, label_terminators, labels_of,
                               parse_answer, parse_batch_answer, short_error)
from labelwise._prompts import _DEFAULT_REASK, PROMPTS_DIR

TEXT = "对科技型中小企业的研发投入给予财政补助。"
LABELS = ("企业", "园区", "金融支持")


def _copy(tmp_path, name: str = "fewshot"):
    path = tmp_path / f"{name}.yaml"
    shutil.copy(PROMPTS_DIR / f"{name}.yaml", path)
    return path


def test_editing_the_reask_or_the_cue_in_a_prompt_file_changes_its_ref(tmp_path):
    path = _copy(tmp_path)
    before = load_prompt(path)
    assert before.reask == _DEFAULT_REASK  # the bundled file spells out the loader's default
    text = path.read_text(encoding="utf-8")

    path.write_text(text.replace("请重新回答", "请再回答一次"), encoding="utf-8")
    reask_edited = load_prompt(path)
    assert "请再回答一次" in reask_edited.render_reask("x") and reask_edited.ref != before.ref

    assert text.rstrip().endswith("请重新回答，只用给定的类别。")
    cue = "  类别：\nreask:"  # the answer cue is the suffix's last line, right before the reask field
    assert text.count(cue) == 1
    path.write_text(text.replace(cue, "  标签：\nreask:"), encoding="utf-8")
    cue_edited = load_prompt(path)
    assert cue_edited.suffix.endswith("标签：") and cue_edited.ref not in (before.ref, reask_edited.ref)


def test_the_hash_covers_defaults_a_prompt_file_leaves_out(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("prefix: '可选类别：{labels}'\nsuffix: '句子：{text}\n类别：'\n", encoding="utf-8")
    spec = load_prompt(path)
    assert spec.reask == _DEFAULT_REASK
    assert "上一个回答无效：坏" in spec.render_reask("坏")
    # same file text, another re-ask in effect (as when the loader's default is edited): another ref
    assert dataclasses.replace(spec, reask="答案无效：{error}").ref != spec.ref
    assert dataclasses.replace(spec, json_instruction="只输出JSON。").ref != spec.ref
    assert dataclasses.replace(spec).ref == spec.ref


def test_a_reask_with_an_unknown_variable_is_refused_at_load(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prefix: a\nsuffix: b\nreask: '{error} {labels}'\n", encoding="utf-8")
    with pytest.raises(PromptError) as exc:
        load_prompt(path)
    assert "reask" in str(exc.value) and "labels" in str(exc.value) and str(path) in str(exc.value)


def test_the_reask_turn_sent_is_the_prompt_files(fake_server, corpus, tmp_path):
    path = _copy(tmp_path, "zeroshot_defs")
    path.write_text(path.read_text(encoding="utf-8").replace("上一个回答无效：{error}", "答案不合格（{error}）"),
                    encoding="utf-8")
    spec = load_prompt(path)
    server = fake_server(script=["garbage", "ok"])
    with Labeler("openai:fake-model", base_url=server.base_url, examples=corpus, prompt=path, shots=0) as labeler:
        pred = labeler.label(TEXT)
    assert pred.status == "ok" and pred.attempts == 2 and pred.prompt == spec.ref
    first, second = server.received
    garbage = second["messages"][1]["content"]
    with pytest.raises((ValueError, ValidationError)) as exc:
        parse_answer(garbage, "json", labeler.taxonomy.labels, True, 3)
    assert second["messages"][2] == {"role": "user", "content": spec.render_reask(short_error(exc.value))}
    assert second["messages"][2]["content"].startswith("答案不合格（")


def test_older_spellings_of_the_format_still_work(corpus):
    taxonomy = load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml")
    spec = load_prompt("fewshot")
    assert spec.render(TEXT, taxonomy, [], json_answer=True) == spec.render(TEXT, taxonomy, [], answer_format="json")
    assert spec.render(TEXT, taxonomy, [], json_answer=False) == spec.render(TEXT, taxonomy, [])
    items = [("1", "甲。"), ("2", "乙。")]
    assert (spec.render_batch(items, taxonomy, [], json_answer=False)
            == spec.render_batch(items, taxonomy, [], answer_format="lines"))
    old = ModelAnswer("企业", format="labels", mode="prompt")
    assert (old.answer_format, old.structured_mode, old.format, old.mode) == ("lines", "prompt", "lines", "prompt")
    cached = ModelAnswer.from_dict({"text": "{}", "format": "json", "tokens": None, "mode": "json_schema"})
    assert (cached.answer_format, cached.structured_mode) == ("json", "json_schema")
    assert parse_answer("企业、园区", "labels", LABELS, True, 3) == parse_answer("企业、园区", "lines", LABELS, True, 3)


def test_lines_answers_and_their_confidence():
    keys = batch_keys(3)
    assert keys == ("1", "2", "3")
    text = "[1] 企业、园区\n[2] 金融支持\n[3] 航天"
    out = parse_batch_answer(text, "lines", keys, LABELS, True, 3)
    assert out["1"] == ["企业", "园区"] and out["2"] == ["金融支持"] and "航天" in out["3"]
    tokens = [("[1] ", 0.0), ("企业", -0.5), ("、园区\n", -0.1), ("[2] ", 0.0), ("金融", -1.0), ("支持", -1.0)]
    answer = ModelAnswer("".join(t for t, _ in tokens), "lines", tokens)
    assert batch_confidence(answer, "2", "金融支持") == pytest.approx(2.718281828 ** -2.0)
    assert batch_confidence(answer, "1", "企业") == pytest.approx(2.718281828 ** -0.5)
    assert batch_confidence(answer, "4", "企业") is None
    assert label_terminators(True, 3) == (LABEL_JOINER, "\n") and label_terminators(True, 1) == ("\n",)
    assert label_terminators(False, 3) == ("\n",)


def test_labels_and_confidence_of_a_probs_answer():
    answer = ModelAnswer("园区", "probs", label_probs={"企业": 0.2, "园区": 0.7, "金融支持": 0.1})
    assert labels_of(answer, LABELS, True, 3, 0.15) == ["园区", "企业"]
    assert labels_of(answer, LABELS, False, 3, 0.15) == ["园区"]
    assert confidence(answer, "园区") == 0.7
    short = ModelAnswer("园区", "probs", label_probs={"园区": 1.0})
    with pytest.raises(ValueError, match="do not cover the taxonomy"):
        labels_of(short, LABELS, True, 3, 0.15)
