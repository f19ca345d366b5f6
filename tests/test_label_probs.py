"""A probability for every taxonomy label: the embedded model scores all labels over one shared prompt KV prefix
(a label trie decoded as parallel llama.cpp sequences). Real model, few texts."""

from __future__ import annotations

import math

import pytest

from labelwise import Labeler
from labelwise._settings import DEFAULT_LABEL_THRESHOLD
from labelwise._models import ModelAnswer
from labelwise._answer import label_probs_from_logprobs, labels_from_probs
from labelwise._scoring import CHUNK, chunk_cuts

# ------------------------------------------------------------------ no model


def test_chunk_cuts_fall_after_the_first_blank_line_and_at_most_chunk_apart():
    pieces = [b"a"] * 10 + [b"\n\n"] + [b"b"] * (2 * CHUNK + 5) + [b"\n\n"] + [b"c"] * 7
    first = 11
    assert chunk_cuts(pieces) == [first, first + CHUNK, first + 2 * CHUNK, len(pieces)]
    assert chunk_cuts([b"x"] * (CHUNK + 1)) == [CHUNK, CHUNK + 1]
    assert chunk_cuts([b"x", b"\n\n"]) == [2]  # a blank line at the very end is not a cut of its own
    # a prompt shares its cuts with any other that has the same instructions (up to the first blank line)
    assert chunk_cuts(pieces[:first + 3])[0] == chunk_cuts(pieces)[0] == first


def test_labels_from_probs_takes_the_top_label_then_those_over_the_threshold():
    probs = {"a": 0.1, "b": 0.45, "c": 0.3, "d": 0.15}
    assert labels_from_probs(probs, True, 3, 0.3) == ["b", "c"]
    assert labels_from_probs(probs, True, 3, 0.1) == ["b", "c", "d"]  # capped at max_labels
    assert labels_from_probs(probs, True, 1, 0.1) == ["b"]
    assert labels_from_probs(probs, False, 3, 0.1) == ["b"]
    assert labels_from_probs({"x": 0.5, "y": 0.5}, True, 3, 0.9) == ["x"]  # a tie keeps taxonomy order


def test_model_answer_round_trips_label_probs():
    answer = ModelAnswer("b", "probs", None, {"prompt_tokens": 3}, "scores", label_probs={"a": 0.25, "b": 0.75})
    again = ModelAnswer.from_dict(answer.to_dict())
    assert again.label_probs == {"a": 0.25, "b": 0.75} and again.answer_format == "probs"
    assert ModelAnswer.from_dict({"text": "x", "format": "json"}).label_probs is None


def _tok(piece: str, lp: float, alts: list[tuple[str, float]] = ()) -> tuple[bytes, float, list[tuple[bytes, float]]]:
    return piece.encode(), lp, [(a.encode(), x) for a, x in [(piece, lp), *alts]]


LABELS = ("财政支持", "金融支持", "金融机构", "园区")


def test_label_probs_from_logprobs_maps_alternatives_onto_labels():
    tokens = [_tok('{"', -0.01), _tok("labels", -0.01), _tok('": ["', -0.01),
              _tok("金融", -0.5, [("财政", -1.0), ("园区", -2.0), ("xyz", -3.0), ("金", -4.0)]),
              _tok("支持", -0.2, [("机构", -1.7)]), _tok('"]}', -0.01, [("、", -2.0)])]
    probs = label_probs_from_logprobs(tokens, LABELS)
    e = math.exp
    mass = {"财政支持": e(-1.0), "园区": e(-2.0),
            "金融支持": e(-4.0) / 2 + e(-0.5) * e(-0.2),  # "金" may start either 金融 label: shared equally
            "金融机构": e(-4.0) / 2 + e(-0.5) * e(-1.7)}  # an alternative after the chosen 金融
    total = sum(mass.values())
    assert list(probs) == list(LABELS)
    for lab in LABELS:
        assert probs[lab] == pytest.approx(mass[lab] / total)
    assert math.isclose(sum(probs.values()), 1.0)


def test_label_probs_from_logprobs_handles_a_token_that_straddles_the_label_start():
    tokens = [_tok('{"labels": ["园', -0.1, [('{"labels": ["财', -1.0), ('{"labels": []', -2.0), ("园", -0.5)]),
              _tok('区"]}', -0.01)]
    probs = label_probs_from_logprobs(tokens, LABELS)
    # 园 without the answer's bytes before the label cannot be a label's start here; 财 starts 财政支持 only
    total = math.exp(-1.0) + math.exp(-0.1) * math.exp(-0.01)
    assert probs["财政支持"] == pytest.approx(math.exp(-1.0) / total)
    assert probs["园区"] == pytest.approx(math.exp(-0.11) / total)
    assert probs["金融支持"] == probs["金融机构"] == 0.0


def test_label_probs_from_logprobs_is_none_without_alternatives_or_a_labels_list():
    assert label_probs_from_logprobs([(b'{"labels": ["', -0.1, []), (b'\xe5\x9b\xad\xe5\x8c\xba"]}', -0.1, [])],
                                     LABELS) is None
    assert label_probs_from_logprobs([_tok('{"items": []}', -0.1, [("x", -1.0)])], LABELS) is None


def test_openai_label_probs_from_top_logprobs_or_null_when_the_server_gives_none(fake_server, pool):
    with_lp = fake_server()
    none = fake_server(no_logprobs=True)
    for server, expect in ((with_lp, True), (none, False)):
        labeler = Labeler("openai:fake", base_url=server.base_url, examples=pool, shots=0, cache=False)
        pred = labeler.label(TEXTS[0])
        labeler.close()
        assert pred.status == "ok"
        assert server.received[0]["logprobs"] is True and server.received[0]["top_logprobs"] == 20
        if expect:  # the fake's alternatives spell no label: all the mass is the answer's own first label
            assert list(pred.label_probs) == list(labeler.taxonomy.labels)
            assert pred.label_probs[pred.labels[0]] == 1.0 == pred.confidence
            assert sum(pred.label_probs.values()) == 1.0
        else:
            assert pred.label_probs is None and pred.confidence is None


# ------------------------------------------------------------------ the real embedded model

TEXTS = ["对科技型中小企业的研发投入给予财政补助。", "建设国家高新技术产业开发区，推动园区高质量发展。",
         "支持集成电路设计企业流片。"]


@pytest.fixture(scope="module")
def pool(corpus):
    return corpus.subset([it.id for it in corpus.items[:300]])


@pytest.mark.slow
def test_single_label_probabilities_cover_the_taxonomy_and_sum_to_one(local_model, pool):
    labeler = Labeler("local", examples=pool, shots=2, cache=False, multi_label=False)
    preds = labeler.label_many(TEXTS)
    labels = list(labeler.taxonomy.labels)
    for pred in preds:
        assert pred.status == "ok"
        probs = pred.label_probs
        assert list(probs) == labels  # every taxonomy label, in taxonomy order
        assert all(0.0 <= p <= 1.0 for p in probs.values())
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
        top = max(probs, key=probs.get)
        assert pred.labels == [top]
        assert pred.confidence == probs[top]
        assert probs[top] < 1.0 and sum(p > 0.0 for p in probs.values()) > 1  # a distribution, not a one-hot
    assert labeler.stats["model_calls"] == len(TEXTS)


@pytest.mark.slow
def test_multi_label_set_is_top_label_plus_labels_over_the_threshold(local_model, pool):
    for threshold in (DEFAULT_LABEL_THRESHOLD, 0.02):
        labeler = Labeler("local", examples=pool, shots=2, cache=False, max_labels=3, label_threshold=threshold)
        for pred in labeler.label_many(TEXTS):
            probs = pred.label_probs
            assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)  # the first label's distribution
            ranked = sorted(probs, key=probs.get, reverse=True)
            assert pred.labels[0] == ranked[0] and 1 <= len(pred.labels) <= 3
            assert all(probs[lab] >= threshold for lab in pred.labels[1:])
            assert pred.labels == ranked[:len(pred.labels)]
            if len(pred.labels) < 3:
                assert probs[ranked[len(pred.labels)]] < threshold
    with pytest.raises(ValueError):
        Labeler("local", examples=pool, shots=2, cache=False, label_threshold=0.0)


@pytest.mark.slow
def test_scores_are_the_same_whatever_ran_before(local_model, pool):
    """Reusing the shared instructions' KV changes nothing: the same prompt gives bit-identical scores."""
    fewshot = Labeler("local", examples=pool, shots=2, cache=False)
    zeroshot = Labeler("local", examples=pool, prompt="zeroshot_defs", cache=False,
                       taxonomy=fewshot.taxonomy)
    labels, ends = fewshot.taxonomy.labels, ("、", "\n")
    a, b = (fewshot.render(t).text for t in TEXTS[:2])
    other = zeroshot.render(TEXTS[2]).text
    scorer = local_model.scorer()

    scorer.score(other, labels, ends)
    first, counts_first = scorer.score(a, labels, ends)  # nothing shared with `other`: evaluated from scratch
    _, counts_b = scorer.score(b, labels, ends)  # shares the instructions with `a`
    again, counts_again = scorer.score(a, labels, ends)
    assert counts_first["evaluated_tokens"] == counts_first["prompt_tokens"]
    assert 0 < counts_b["evaluated_tokens"] < counts_b["prompt_tokens"]
    assert 0 < counts_again["evaluated_tokens"] < counts_again["prompt_tokens"]
    assert again.tolist() == first.tolist()

    # and through the labeler, in another order
    forward = [p.label_probs for p in fewshot.label_many(TEXTS)]
    backward = [p.label_probs for p in fewshot.label_many(TEXTS[::-1])][::-1]
    assert forward == backward


@pytest.mark.slow
def test_a_label_that_prefixes_another_is_scored_as_itself(local_model):
    """The terminator after a label counts: after examples that all say 企业创新, 企业 alone is unlikely."""
    scorer = local_model.scorer()
    short, long = "企业", "企业创新"
    assert scorer.tokenize(long, bos=False)[:len(scorer.tokenize(short, bos=False))] == scorer.tokenize(short, bos=False)
    prompt = "".join(f"句子：第{i}条。\n类别：企业创新\n\n" for i in range(4)) + "句子：第5条。\n类别："
    logp, counts = scorer.score(prompt, (short, long, "园区"), ("\n",))
    assert logp[1] > logp[0] + 1.0  # without the terminator, 企业 would score at least as high as 企业创新
    assert sum(math.exp(x) for x in logp) <= 1.0  # disjoint answers: their probabilities cannot add up past 1
    assert counts["scored_tokens"] == 3  # trie nodes 企业, 园区 and 创新: the shared first token decoded once


@pytest.mark.slow
def test_one_batch_scores_like_each_label_alone(local_model, pool):
    """The parallel sequences see the prompt and their own label only, not each other's tokens."""
    labeler = Labeler("local", examples=pool, shots=2, cache=False)
    labels, ends = labeler.taxonomy.labels, ("、", "\n")
    prompt = labeler.render(TEXTS[0]).text
    scorer = local_model.scorer()
    together, _ = scorer.score(prompt, labels, ends)
    for j in (0, len(labels) // 2, len(labels) - 1):
        alone, _ = scorer.score(prompt, (labels[j],), ends)
        assert abs(alone[0] - together[j]) < 0.1  # batch composition moves llama.cpp's numbers only slightly


@pytest.mark.slow
def test_cache_round_trip_keeps_label_probs(local_model, pool, tmp_path):
    first = Labeler("local", examples=pool, shots=2, cache_dir=str(tmp_path))
    pred = first.label(TEXTS[0])
    first.close()
    again = Labeler("local", examples=pool, shots=2, cache_dir=str(tmp_path))
    hit = again.label(TEXTS[0])
    assert hit.cached and again.stats["model_calls"] == 0
    assert hit.label_probs == pred.label_probs and hit.confidence == pred.confidence
    # a different threshold decides other answers: a new prediction, from the cached model answer
    other = Labeler("local", examples=pool, shots=2, cache_dir=str(tmp_path), label_threshold=0.01)
    redo = other.label(TEXTS[0])
    assert other.stats["model_calls"] == 0 and redo.label_probs == pred.label_probs
    assert set(pred.labels) <= set(redo.labels)
    again.close()
    other.close()


@pytest.mark.slow
def test_items_per_request_scores_each_item_on_its_own(local_model, pool):
    single = Labeler("local", examples=pool, shots=2, cache=False)
    batched = Labeler("local", examples=pool, shots=2, cache=False, items_per_request=3)
    one = single.label_many(TEXTS)
    three = batched.label_many(TEXTS)
    assert batched.stats["model_calls"] == len(TEXTS)
    assert [(p.labels, p.label_probs, p.examples) for p in three] == [(p.labels, p.label_probs, p.examples) for p in one]
