"""Prompt templates, few-shot example selection (with its leakage guard), and answer validation."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import ValidationError

from labelwise import PromptError, load_prompt, load_taxonomy, normalize_text
from labelwise._answer import LABEL_JOINER, label_confidence, parse_answer, parse_batch_answer, short_error
from labelwise._examples import STRATEGIES, make_selector
from labelwise._labeler import Labeler
from labelwise._prompts import PROMPTS_DIR

PROMPT_FILES = sorted(p for p in PROMPTS_DIR.glob("*.yaml") if p.stem != "policy_taxonomy")
K = 5
UNREACHABLE = "http://127.0.0.1:9/v1"  # building an OpenAI labeler sends nothing; nothing here may reach a server


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml")


@pytest.fixture(scope="module")
def query(corpus):
    """A pool item whose text has ASCII commas (NFKC of the full-width ones), so it has an NFKC variant."""
    return next(it for it in corpus.items if "," in it.text and len(it.text) > 30)


@pytest.fixture(scope="module")
def selector(corpus):
    """`selector(strategy, k=K, seed=0)`: selectors built once per module (fitting TF-IDF takes a second or two)."""
    built = {}

    def get(strategy: str, k: int = K, seed: int = 0):
        if (strategy, k, seed) not in built:
            built[strategy, k, seed] = make_selector(strategy, corpus, k, seed)
        return built[strategy, k, seed]

    return get


def variant_of(text: str) -> str:
    """The same item written differently: full-width commas, stray surrounding whitespace."""
    v = "\n  " + text.replace(",", "，") + " \t"
    assert v != text
    return v


# --------------------------------------------------------------------------- prompts


def test_there_are_prompt_files():
    assert {p.stem for p in PROMPT_FILES} >= {"fewshot", "fewshot_defs", "zeroshot_defs"}


@pytest.mark.parametrize("path", PROMPT_FILES, ids=lambda p: p.stem)
def test_each_prompt_renders(path, taxonomy, corpus):
    spec = load_prompt(path.stem)
    assert spec.name == path.stem
    examples = [{"id": it.id, "text": it.text, "labels": list(it.labels)} for it in corpus.items[10:12]]
    text = "支持科技型中小企业开展研发活动。"
    out = spec.render(text, taxonomy, examples)
    assert out.text.rstrip().endswith("类别：")
    assert text in out.text
    assert "{" not in out.text and "}" not in out.text  # every variable filled
    source = path.read_text(encoding="utf-8")
    if "{definitions}" in source:
        assert all(taxonomy.definitions[lab] in out.text for lab in taxonomy.labels)
    if "{labels}" in spec.prefix:
        assert LABEL_JOINER.join(taxonomy.labels) in out.text
    if spec.uses_examples:
        assert out.example_ids == tuple(e["id"] for e in examples)
        for e in examples:
            assert e["text"] in out.text
            assert LABEL_JOINER.join(e["labels"]) in out.text
        # examples come before the text being labeled
        assert out.text.index(examples[-1]["text"]) < out.text.rindex(text)
    else:
        assert out.example_ids == ()
        assert examples[0]["text"] not in out.text
    as_json = spec.render(text, taxonomy, examples, answer_format="json")
    assert as_json.text.startswith(out.text)
    assert '"labels"' in as_json.text
    batch = spec.render_batch([("1", "第一句。"), ("2", "第二句。")], taxonomy, examples)
    assert "[1] 第一句。" in batch.text and "[2] 第二句。" in batch.text
    assert '"items"' in batch.text


def test_prompt_ref_is_name_at_hash_and_follows_the_file_text(tmp_path):
    spec = load_prompt("fewshot")
    name, _, digest = spec.ref.partition("@")
    assert name == "fewshot"
    assert len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)
    assert load_prompt("fewshot").ref == spec.ref  # stable

    copy = tmp_path / "fewshot.yaml"
    shutil.copy(PROMPTS_DIR / "fewshot.yaml", copy)
    assert load_prompt(copy).ref == spec.ref  # same text, same ref, wherever the file lives
    copy.write_text(copy.read_text(encoding="utf-8").replace("任务：", "任务： "), encoding="utf-8")
    changed = load_prompt(copy)
    assert changed.name == "fewshot"
    assert changed.ref != spec.ref
    assert load_prompt("fewshot_defs").ref != spec.ref


def test_prompt_errors(tmp_path):
    with pytest.raises(PromptError) as exc:
        load_prompt("no_such_prompt")
    assert "fewshot" in str(exc.value)  # lists the known prompts
    assert "policy_taxonomy" not in str(exc.value)

    bad = tmp_path / "bad.yaml"
    bad.write_text("prefix: a\nsuffix: b\nsufix: c\n", encoding="utf-8")
    with pytest.raises(PromptError) as exc:
        load_prompt(bad)
    assert "sufix" in str(exc.value) and str(bad) in str(exc.value)

    bad.write_text("prefix: a\n", encoding="utf-8")
    with pytest.raises(PromptError) as exc:
        load_prompt(bad)
    assert "suffix" in str(exc.value)

    bad.write_text("prefix: '{labels}'\nsuffix: '{text} {nonsense}'\n", encoding="utf-8")
    spec = load_prompt(bad)
    with pytest.raises(PromptError) as exc:
        spec.render("x", load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml"), [])
    assert "nonsense" in str(exc.value)


# --------------------------------------------------------------------------- example selection


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_returns_k_examples_never_the_query(strategy, corpus, query, selector):
    sel = selector(strategy)
    pool_ids = {it.id for it in corpus}
    for text in (query.text, variant_of(query.text)):
        examples = sel.select_examples({"text": text})
        assert len(examples) == K
        ids = [e["id"] for e in examples]
        assert len(set(ids)) == K
        assert query.id not in ids
        assert all(normalize_text(e["text"]) != query.text for e in examples)
        assert set(ids) <= pool_ids
        assert all(e["labels"] for e in examples)
    # the same through the vectorised path used for runs
    many = sel.select_many([query.text], K)[0]
    assert len(many) == K and query.id not in [e["id"] for e in many]


def test_similar_would_pick_the_query_itself_without_the_guard(query, selector):
    """The guard matters: by similarity the query's own text is the best match in the pool."""
    sel = selector("similar")
    sims = sel.similarities(query.text)
    ids = [it.id for it in sel.items]
    assert ids[int(sims.argmax())] == query.id


@pytest.mark.parametrize("strategy", ["similar", "diverse"])
def test_identical_text_is_never_an_example_whatever_the_id(strategy, query, selector):
    sel = selector(strategy)
    examples = sel.select_examples({"text": query.text, "id": "row-17"})
    assert all(normalize_text(e["text"]) != query.text for e in examples)


def test_labeler_never_shows_a_text_as_its_own_example_whatever_the_id(corpus, query):
    labeler = _batch_labeler(corpus, 4, size=1)
    rendered = labeler.render(query.text, id="row-1")
    assert query.id not in rendered.example_ids
    assert rendered.text.count(query.text) == 1


def test_diverse_covers_more_labels_than_similar(corpus, query, selector):
    similar = selector("similar")
    diverse = selector("diverse")

    def coverage(sel, text):
        return len({lab for e in sel.select_examples({"text": text}) for lab in e["labels"]})

    assert coverage(diverse, query.text) > coverage(similar, query.text)
    pairs = [(coverage(similar, it.text), coverage(diverse, it.text)) for it in corpus.items[:20]]
    assert all(d >= s for s, d in pairs)
    assert sum(d > s for s, d in pairs) >= 15


def test_random_is_reproducible_per_seed(corpus, query):
    a = [e["id"] for e in make_selector("random", corpus, K, seed=1).select_examples({"text": query.text})]
    b = [e["id"] for e in make_selector("random", corpus, K, seed=1).select_examples({"text": query.text})]
    c = [e["id"] for e in make_selector("random", corpus, K, seed=2).select_examples({"text": query.text})]
    assert a == b
    assert a != c
    other = corpus.items[200]
    d = [e["id"] for e in make_selector("random", corpus, K, seed=1).select_examples({"text": other.text})]
    assert d != a  # seeded per query, not one fixed draw


def test_fixed_gives_the_same_examples_to_every_text(corpus, query):
    sel = make_selector("fixed", corpus, K)
    a = [e["id"] for e in sel.select_examples({"text": "完全不同的一句话。"})]
    b = [e["id"] for e in sel.select_examples({"text": "另一句无关的话。"})]
    assert a == b and len(a) == K
    # and when the query is one of them, it is replaced by the next
    first = corpus.by_id()[a[0]]
    c = [e["id"] for e in sel.select_examples({"text": first.text})]
    assert first.id not in c and len(c) == K


def test_unknown_strategy(corpus):
    with pytest.raises(ValueError, match="similar"):
        make_selector("nearest", corpus, K)


def _batch_labeler(corpus, k: int, size: int) -> Labeler:
    return Labeler("openai:x", base_url=UNREACHABLE, examples=corpus, shots=k, items_per_request=size)


def test_batch_mates_are_never_examples(corpus, query, selector):
    k = 4
    labeler = _batch_labeler(corpus, k, size=4)
    # the batch: the query and its 3 nearest neighbours, i.e. exactly what it would otherwise be shown
    neighbours = selector("similar", k).select_examples({"text": query.text})[:3]
    batch = [(query.id, query.text)] + [(e["id"], e["text"]) for e in neighbours]
    banned = {iid for iid, _ in batch}
    examples = labeler.examples.pick(batch)
    assert len(examples) == k
    assert not banned & {e["id"] for e in examples}
    assert not {normalize_text(t) for _, t in batch} & {normalize_text(e["text"]) for e in examples}
    # each single item still gets K examples and never itself
    for iid, text in batch:
        single = labeler.examples.pick([(iid, text)])
        assert len(single) == k and iid not in {e["id"] for e in single}


def test_rendered_prompt_of_a_pool_text_does_not_show_it(corpus, query):
    labeler = _batch_labeler(corpus, 4, size=1)
    rendered = labeler.render(variant_of(query.text))
    assert len(rendered.example_ids) == 4
    assert query.id not in rendered.example_ids
    assert rendered.text.count(query.text) == 1  # only as the text to label


# --------------------------------------------------------------------------- answer validation


@pytest.fixture(scope="module")
def labels(taxonomy):
    return taxonomy.labels


def test_parse_answer_accepts_taxonomy_labels_and_dedupes(labels):
    assert parse_answer('{"labels": ["企业", "金融支持"]}', "json", labels, True, 3) == ["企业", "金融支持"]
    assert parse_answer('```json\n{"labels": ["企业", "企业"]}\n```', "json", labels, True, 3) == ["企业"]
    assert parse_answer("企业、园区、企业\n", "labels", labels, True, 3) == ["企业", "园区"]
    assert parse_answer('Sure: {"labels": ["园区"]} done', "json", labels, True, 3) == ["园区"]


def test_parse_answer_rejects_unknown_labels(labels):
    with pytest.raises(ValidationError) as exc:
        parse_answer('{"labels": ["企业", "航天产业"]}', "json", labels, True, 3)
    assert "航天产业" in str(exc.value)
    with pytest.raises(ValidationError):
        parse_answer("航天产业\n", "labels", labels, True, 3)


@pytest.mark.parametrize("raw, message", [
    # what is wrong, and where: the offending text quoted, or the JSON error with its column
    ('{"labels": ["企业"', """not a JSON object: '{"labels": ["企业"'"""),
    ("I cannot help with that.", "not a JSON object: 'I cannot help with that.'"),
    ("", "not a JSON object: ''"),
    ("{labels: [企业]}", "invalid JSON: Expecting property name enclosed in double quotes at line 1, column 2 of the answer"),
    ('{"labels": [企业]}', "invalid JSON: Expecting value at line 1, column 13 of the answer"),
    ('Sure: {"labels": ["企业"],}', "invalid JSON: Expecting property name enclosed in double quotes at line 1, column 25 "
                                  "of the answer"),
    ('Here:\n```json\n{"labels":\n  [企业]}\n```', "invalid JSON: Expecting value at line 4, column 4 of the answer"),
])
def test_parse_answer_rejects_malformed_json_saying_what_and_where(labels, raw, message):
    with pytest.raises(ValueError) as exc:
        parse_answer(raw, "json", labels, True, 3)
    assert str(exc.value) == message
    assert short_error(exc.value) == message  # what the re-ask and the failed prediction say


def test_parse_answer_limits(labels):
    with pytest.raises(ValidationError):
        parse_answer('{"labels": []}', "json", labels, True, 3)
    with pytest.raises(ValidationError):
        parse_answer('{"labels": ["企业", "园区", "高等院校", "科研院所"]}', "json", labels, True, 3)
    with pytest.raises(ValidationError):
        parse_answer('{"labels": ["企业", "园区"]}', "json", labels, False, 3)  # single-label
    with pytest.raises(ValidationError):
        parse_answer('{"labels": ["企业"], "why": "x"}', "json", labels, True, 3)  # extra keys forbidden


def test_parse_batch_answer_judges_each_item(labels):
    raw = json.dumps({"items": [{"id": "1", "labels": ["企业"]}, {"id": "2", "labels": ["航天产业"]}]}, ensure_ascii=False)
    out = parse_batch_answer(raw, answer_format="json", keys=("1", "2", "3"), labels=labels, multi_label=True, max_labels=3)
    assert out["1"] == ["企业"]
    assert isinstance(out["2"], str) and "航天产业" in out["2"]
    assert out["3"] == "no answer for this item"
    garbage = parse_batch_answer("nope", answer_format="json", keys=("1",), labels=labels, multi_label=True, max_labels=3)
    assert isinstance(garbage["1"], str)


def test_label_confidence_is_a_probability():
    tokens = [("企", -0.1), ("业", -0.2), ("、", -0.5), ("园区", -1.0), ("\n", 0.0)]
    text = "".join(t for t, _ in tokens)
    c = label_confidence(text, tokens, "企业")
    assert c is not None and 0.0 <= c <= 1.0
    assert c == pytest.approx(2.718281828 ** -0.3)
    assert label_confidence(text, tokens, "园区") == pytest.approx(2.718281828 ** -1.0)
    assert 0.0 <= label_confidence(text, [("企业", 5.0)], "企业") <= 1.0  # clamped
    assert label_confidence(text, tokens, "高等院校") is None
    assert label_confidence(text, None, "企业") is None
