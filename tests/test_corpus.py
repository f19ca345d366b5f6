"""Corpus loading (bundled TSV, CSV, JSONL, Parquet, encodings, errors with their location) and the taxonomy file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from labelwise import CorpusError, TaxonomyError, item_id, load_corpus, load_taxonomy, normalize_text
from labelwise._labeler import DEFAULT_CORPUS
from labelwise._prompts import PROMPTS_DIR

CJK = re.compile(r"[\u4e00-\u9fff]")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- the bundled corpus


def test_bundled_corpus_counts(corpus):
    assert corpus.rows == 7430
    assert len(corpus) == 6014
    assert corpus.duplicate_rows == 335
    assert len(corpus.labels) == 27
    assert corpus.encoding == "utf-8"
    assert corpus.labeled
    assert not corpus.skipped
    assert len({it.id for it in corpus}) == len(corpus)


def test_text_on_several_lines_gets_its_label_set(corpus):
    lines = DEFAULT_CORPUS.read_text(encoding="utf-8").splitlines()
    multi = [it for it in corpus if len(it.lines) > 1 and len(it.labels) > 1]
    assert multi, "the bundled corpus has texts labeled differently on different lines"
    it = multi[0]
    # every line of the item contributes its label, and the item's labels are exactly those
    from_lines = {lines[n - 1].split("\t", 1)[0].strip() for n in it.lines}
    assert set(it.labels) == from_lines
    assert len(it.labels) == len(set(it.labels))
    for n in it.lines:
        assert item_id(lines[n - 1].split("\t", 1)[1]) == it.id


def test_ids_are_stable_across_loads(corpus):
    again = load_corpus(DEFAULT_CORPUS)
    assert [it.id for it in again] == [it.id for it in corpus]
    # a content hash, the same in every process and version: pinned so a silent change (which would orphan
    # every cache entry and resumable run) fails here
    assert corpus.items[0].id == "5922d46f13c061cc"
    assert item_id(corpus.items[0].text) == corpus.items[0].id


def test_ids_equal_for_whitespace_and_nfkc_variants():
    base = "支持企业开展研发活动 对ABC类项目给予100万元资助。"
    variants = [
        "  " + base + "\n",  # leading / trailing whitespace
        base.replace(" ", " \t  "),  # a whitespace run instead of one space
        base.replace(" ", "\u3000"),  # ideographic space
        base.replace(" ", "\n"),  # the same text wrapped
        base.replace("ABC", "ＡＢＣ").replace("100", "１００"),  # full-width forms fold under NFKC
    ]
    for v in variants:
        assert item_id(v) == item_id(base), repr(v)
    assert item_id(base + "。") != item_id(base)
    assert item_id(base.replace(" ", "")) != item_id(base)  # whitespace is folded, not dropped
    assert normalize_text("a \t\n b") == "a b"


def test_duplicates_and_variants_collapse_to_one_item(tmp_path):
    p = write(tmp_path / "d.tsv", "企业\t支持 企业。\n企业\t支持 企业。\n金融支持\t支持  企业。\n园区\t另一句。\n")
    c = load_corpus(p)
    assert c.rows == 4
    assert len(c) == 2
    assert c.duplicate_rows == 1  # only the exact (text, label) repeat
    first = c.items[0]
    assert first.labels == ("企业", "金融支持")
    assert first.lines == (1, 2, 3)


# --------------------------------------------------------------------------- other formats


def test_csv_with_named_columns_and_pipe_labels(tmp_path):
    p = write(tmp_path / "d.csv", "id,body,tags\n1,支持企业研发,企业|技术研发\n2,\"设立基金,支持创业\",金融支持\n")
    c = load_corpus(p, text_col="body", label_col="tags")
    assert [it.text for it in c] == ["支持企业研发", "设立基金,支持创业"]
    assert [it.labels for it in c] == [("企业", "技术研发"), ("金融支持",)]
    assert c.items[0].lines == (2,)  # line 1 is the header


@pytest.mark.parametrize("body, line", [("支持企业研发,园区建设,企业\n设立基金,金融支持\n", 2),
                                        ("设立基金,金融支持\n支持企业研发,园区建设,企业\n", 3)])
def test_csv_row_with_an_unquoted_separator_fails_naming_the_line(tmp_path, body, line):
    # a text with an unquoted comma: never read with its columns shifted (a first such row used to become an index)
    p = write(tmp_path / "d.csv", "text,labels\n" + body)
    err = _error(p)
    assert str(p) in str(err) and f"line {line}" in str(err)


def test_csv_default_columns_and_custom_separator(tmp_path):
    p = write(tmp_path / "d.csv", "text,labels\n支持企业研发,企业;技术研发\n")
    c = load_corpus(p, label_sep=";")
    assert c.items[0].labels == ("企业", "技术研发")


def test_jsonl_labels_as_list_or_delimited_string(tmp_path):
    rows = [{"content": "支持企业研发", "cats": ["企业", "技术研发"]},
            {"content": "设立风险补偿资金池", "cats": "金融支持|企业"},
            {"content": "建设高新区", "cats": '["园区"]'}]
    p = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    c = load_corpus(p, text_col="content", label_col="cats")
    assert [it.labels for it in c] == [("企业", "技术研发"), ("金融支持", "企业"), ("园区",)]
    assert c.labeled


def test_jsonl_without_labels_is_unlabeled(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "支持企业研发"}\n{"text": "建设高新区"}\n')
    c = load_corpus(p)
    assert not c.labeled
    assert [it.labels for it in c] == [(), ()]


def test_parquet_with_list_and_string_labels(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"sentence": ["支持企业研发", "设立风险补偿资金池"],
                  "gold": [["企业", "技术研发"], ["金融支持"]]}).to_parquet(p)
    c = load_corpus(p, text_col="sentence", label_col="gold")
    assert [it.labels for it in c] == [("企业", "技术研发"), ("金融支持",)]

    p2 = tmp_path / "e.parquet"
    pd.DataFrame({"text": ["建设高新区"], "label": ["园区|企业"]}).to_parquet(p2)
    assert load_corpus(p2).items[0].labels == ("园区", "企业")


# --------------------------------------------------------------------------- errors name file, line, column


def _error(path: Path, **kw) -> CorpusError:
    with pytest.raises(CorpusError) as exc:
        load_corpus(path, **kw)
    err = exc.value
    assert str(path) in str(err)
    return err


def test_error_no_tab(tmp_path):
    p = write(tmp_path / "d.tsv", "企业\t支持企业\n没有制表符的行\n")
    err = _error(p)
    assert err.line == 2
    assert "tab" in str(err) and "line 2" in str(err)


def test_error_empty_text(tmp_path):
    p = write(tmp_path / "d.tsv", "企业\t支持企业\n\n企业\t   \n")
    err = _error(p)
    assert (err.line, str(err.column)) == (3, "2")
    assert "empty text" in str(err)


def test_error_empty_label(tmp_path):
    p = write(tmp_path / "d.tsv", "企业\t支持企业\n \t一句话\n")
    err = _error(p)
    assert (err.line, str(err.column)) == (2, "1")
    assert "empty label" in str(err)


def test_error_invalid_json_line(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a", "labels": ["x"]}\n{"text": "b", labels}\n')
    err = _error(p)
    assert err.line == 2
    assert err.column == "15"
    assert "invalid JSON" in str(err) and "line 2, column 15" in str(err)


def test_error_undecodable_bytes_in_utf8_tsv(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_bytes("企业\t支持企业\n".encode() + "企业\t坏".encode() + b"\xff" + "字节\n".encode())
    err = _error(p)
    assert err.line == 2
    # "企业\t坏" is 3+3+1+3 = 10 bytes, so the bad byte is byte 11 of line 2
    assert err.column == "byte 11"
    assert "UTF-8" in str(err) and "line 2" in str(err)


def test_error_undecodable_bytes_in_utf8_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("text,labels\n支持企业,企业\n".encode() + "坏".encode() + b"\xff" + "字节,企业\n".encode())
    err = _error(p)
    assert err.line == 3


def test_error_missing_column_lists_columns_found(tmp_path):
    p = write(tmp_path / "d.csv", "body,tag\n支持企业,企业\n")
    err = _error(p)
    assert "columns found" in str(err)
    assert "'body'" in str(err) and "'tag'" in str(err)
    err = _error(p, text_col="sentence")
    assert "'sentence'" in str(err) and "'body'" in str(err)
    pq = tmp_path / "d.parquet"
    pd.DataFrame({"body": ["x"]}).to_parquet(pq)
    assert "'body'" in str(_error(pq))
    jl = write(tmp_path / "d.jsonl", '{"body": "x"}\n')
    assert "'body'" in str(_error(jl))


def test_error_file_not_found_and_unknown_format(tmp_path):
    assert "not found" in str(_error(tmp_path / "nope.tsv"))
    p = write(tmp_path / "d.xlsx", "x")
    assert "unknown format" in str(_error(p))


def test_skip_bad_reports_count_and_lines(tmp_path):
    p = write(tmp_path / "d.tsv", "企业\t支持企业\n没有制表符\n企业\t\n\t没有类别\n园区\t建设高新区\n")
    c = load_corpus(p, skip_bad=True)
    assert len(c) == 2
    assert [s.line for s in c.skipped] == [2, 3, 4]
    assert len(c.skipped) == 3
    assert all(s.reason for s in c.skipped)


def test_skip_bad_in_jsonl(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a", "labels": ["x"]}\nnot json\n{"text": ""}\n{"text": "b", "labels": "y"}\n')
    c = load_corpus(p, skip_bad=True)
    assert [it.text for it in c] == ["a", "b"]
    assert [s.line for s in c.skipped] == [2, 3]


# --------------------------------------------------------------------------- encodings


def test_gb18030_tsv_is_read(tmp_path):
    text = "企业\t支持中小企业发展\n金融支持\t设立风险补偿资金池，支持科技型企业融资\n"
    p = write(tmp_path / "gb.tsv", text, "gb18030")
    with pytest.raises(UnicodeDecodeError):
        p.read_bytes().decode("utf-8")  # really not UTF-8
    c = load_corpus(p)
    assert c.encoding == "gb18030"
    assert [it.labels for it in c] == [("企业",), ("金融支持",)]
    assert c.items[1].text == normalize_text("设立风险补偿资金池，支持科技型企业融资")


def test_utf8_with_bom_is_read(tmp_path):
    p = tmp_path / "bom.tsv"
    p.write_bytes(b"\xef\xbb\xbf" + "企业\t支持企业\n".encode())
    c = load_corpus(p)
    assert c.items[0].labels == ("企业",)


def test_gb18030_tsv_whose_first_bytes_look_like_utf8(tmp_path):
    p = write(tmp_path / "gb.tsv", "园区\t建设国家高新区\n企业\t支持中小企业发展\n", "gb18030")
    c = load_corpus(p)
    assert c.encoding == "gb18030"
    assert [it.labels for it in c] == [("园区",), ("企业",)]


def test_gb18030_jsonl_is_read(tmp_path):
    p = write(tmp_path / "gb.jsonl", '{"text": "支持中小企业发展", "labels": ["企业"]}\n', "gb18030")
    c = load_corpus(p)
    assert c.encoding == "gb18030"
    assert c.items[0].text == "支持中小企业发展"


def test_gb18030_csv_is_read(tmp_path):
    p = write(tmp_path / "gb.csv", "text,labels\n支持中小企业发展,企业\n设立风险补偿资金池,金融支持|企业\n", "gb18030")
    c = load_corpus(p)
    assert c.encoding == "gb18030"
    assert [it.labels for it in c] == [("企业",), ("金融支持", "企业")]


# --------------------------------------------------------------------------- taxonomy


def test_policy_taxonomy_matches_corpus_labels(corpus):
    tax = load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml")
    assert len(tax) == 27
    assert set(tax.labels) == set(corpus.labels)
    for lab in tax.labels:
        definition = tax.definitions[lab]
        assert definition.strip(), lab
        assert CJK.search(definition), (lab, definition)
    described = tax.describe()
    assert described.count("\n") == 26
    assert all(f"- {lab}：" in described for lab in tax.labels)


@pytest.mark.parametrize("content", [
    "财政支持: [1\n",  # invalid YAML
    "财政支持:\n  - a\n  - b\n",  # a definition that is not a string
    "- 财政支持\n- 3\n",  # a list with a non-string
    "just a string\n",  # neither mapping nor list
    "",  # empty file
    "[]\n",  # no labels
])
def test_malformed_taxonomy_names_the_file(tmp_path, content):
    p = write(tmp_path / "tax.yaml", content)
    with pytest.raises(TaxonomyError) as exc:
        load_taxonomy(p)
    assert str(p) in str(exc.value)


def test_malformed_taxonomy_yaml_gives_line(tmp_path):
    p = write(tmp_path / "tax.yaml", "财政支持: 定义\n税收激励: [1\n")
    with pytest.raises(TaxonomyError) as exc:
        load_taxonomy(p)
    assert exc.value.line is not None and exc.value.line >= 2


def test_empty_mapping_taxonomy_is_refused(tmp_path):
    p = write(tmp_path / "tax.yaml", "{}\n")
    with pytest.raises(TaxonomyError) as exc:
        load_taxonomy(p)
    assert str(p) in str(exc.value)


def test_taxonomy_missing_file_and_text_format(tmp_path):
    with pytest.raises(TaxonomyError) as exc:
        load_taxonomy(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(exc.value)
    p = write(tmp_path / "tax.txt", "# comment\n企业\n\n园区\n企业\n")
    assert load_taxonomy(p).labels == ("企业", "园区")


def test_taxonomy_check_names_unknown_labels(corpus):
    tax = load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml")
    tax.check(corpus.labels)
    with pytest.raises(TaxonomyError) as exc:
        tax.check(["企业", "不存在的类别"], where="x.tsv")
    assert "不存在的类别" in str(exc.value) and "x.tsv" in str(exc.value)
