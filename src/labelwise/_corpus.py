"""Labeled (or unlabeled) texts read from TSV, CSV, JSONL or Parquet, collapsed into unique items."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import CorpusError
from ._io import bundled

__all__ = ["Item", "Corpus", "SkippedLine", "load_corpus", "normalize_text", "item_id", "corpus_from_records",
           "check_text", "column_texts", "decode_text", "DEFAULT_CORPUS"]

DEFAULT_CORPUS = bundled("labelwise.data") / "policy_labels.tsv"

_WS = re.compile(r"\s+")
LABEL_COLUMNS = ("labels", "label")
TEXT_COLUMNS = ("text",)
LABEL_SEP = "|"  # joins a text's labels in CSV outputs
_HEADER_NAMES = {"label", "labels", "text", "sentence", "category", "categories", "tag", "tags", "class"}


def normalize_text(text: str) -> str:
    """NFKC with whitespace runs folded, so trivially different copies of a text are one item."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def check_text(text: Any, where: str = "text") -> str:
    """`text` if it is a non-empty string; else a ValueError saying what is wrong (no model call for it)."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where} is empty")
    return text


def column_texts(df: Any, text_col: str) -> tuple[list[Any], dict[int, str]]:
    """A DataFrame column's cells as texts, and the error of each cell that isn't one (missing, empty, by row)."""
    import pandas as pd

    if text_col not in df.columns:
        raise KeyError(f"no column {text_col!r}; columns found: {list(df.columns)}")
    cells = df[text_col].tolist()
    bad = {}
    for n, (index, cell) in enumerate(zip(df.index, cells)):
        try:
            if cell is None or (pd.api.types.is_scalar(cell) and pd.isna(cell)):  # None, NaN, pd.NA
                raise ValueError(f"{text_col!r} at row {index!r} is missing")
            cells[n] = check_text(cell if isinstance(cell, str) else str(cell), f"{text_col!r} at row {index!r}")
        except ValueError as err:
            bad[n] = str(err)
    return cells, bad


def item_id(text: str) -> str:
    """Stable id of a text: a content hash of its normalized form, the same in every run."""
    return _hash_normalized(normalize_text(text))


def _hash_normalized(norm: str) -> str:
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    """One unique text with its set of existing labels (empty when unlabeled)."""

    id: str
    text: str
    labels: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()


@dataclass(frozen=True)
class SkippedLine:
    """A source line left out under `skip_bad`, with the reason."""

    line: int
    reason: str


@dataclass
class Corpus:
    """Unique items in first-seen order, plus what loading saw along the way."""

    items: list[Item]
    path: str | None = None
    encoding: str = "utf-8"
    rows: int = 0
    duplicate_rows: int = 0
    labeled: bool = True
    skipped: list[SkippedLine] = field(default_factory=list)
    encoding_guessed: bool = False  # decoded as GB18030 because the bytes are not UTF-8 (a warning was given)
    header_skipped: bool = False  # a TSV's first line was a header (`label<TAB>text`), not an item

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def labels(self) -> list[str]:
        """Every label used, sorted."""
        return sorted({lab for it in self.items for lab in it.labels})

    def by_id(self) -> dict[str, Item]:
        """Items keyed by id."""
        return {it.id: it for it in self.items}

    def without(self, ids: Iterable[str]) -> Corpus:
        """A copy without the given item ids (e.g. to hold texts out of the example pool)."""
        drop = set(ids)
        return Corpus([it for it in self.items if it.id not in drop], self.path, self.encoding, labeled=self.labeled)

    def subset(self, ids: Iterable[str]) -> Corpus:
        """A copy with only the given item ids, in the order given."""
        index = self.by_id()
        return Corpus([index[i] for i in ids if i in index], self.path, self.encoding, labeled=self.labeled)


def corpus_from_records(
    records: Iterable[tuple[int, str, Sequence[str]]], *, path: str | None = None, labeled: bool = True
) -> Corpus:
    """Collapse (line, text, labels) records into unique items; repeated texts merge their labels."""
    merged: dict[str, tuple[str, list[str], list[int]]] = {}
    seen_rows: set[tuple[str, tuple[str, ...]]] = set()
    rows = duplicates = 0
    for line, text, labels in records:
        rows += 1
        norm = normalize_text(text)
        key = _hash_normalized(norm)
        if (key, tuple(labels)) in seen_rows:
            duplicates += 1
        seen_rows.add((key, tuple(labels)))
        entry = merged.setdefault(key, (norm, [], []))
        for lab in labels:
            if lab not in entry[1]:
                entry[1].append(lab)
        entry[2].append(line)
    items = [Item(k, t, tuple(labs), tuple(lines)) for k, (t, labs, lines) in merged.items()]
    return Corpus(items, path=path, rows=rows, duplicate_rows=duplicates, labeled=labeled)


def decode_text(data: bytes, path: Path, encoding: str | None = None) -> tuple[str, str]:
    """Decode as `encoding`, else UTF-8, or GB18030 when the file is plainly not UTF-8; a bad byte names its place."""
    if encoding is not None:
        import codecs

        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise CorpusError(f"unknown encoding {encoding!r}", path=path) from None
        try:
            return data.decode("utf-8-sig" if name == "utf-8" else name), name
        except UnicodeDecodeError as err:
            prefix = data[:err.start]
            column = err.start - (prefix.rfind(b"\n") + 1) + 1
            raise CorpusError(f"bytes {data[err.start:err.start + 4]!r} are not valid {name}", path=path,
                              line=prefix.count(b"\n") + 1, column=f"byte {column}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as err:
        first_bad = err.start
    # A UTF-8 file with a few bad bytes still decodes mostly as UTF-8; a GB18030 file almost never does.
    lenient = data.decode("utf-8", errors="replace")
    bad = lenient.count("\ufffd")
    good = sum(1 for ch in lenient if ord(ch) > 127 and ch != "\ufffd")
    if good < 4 * bad:
        try:
            return data.decode("gb18030"), "gb18030"
        except UnicodeDecodeError:
            pass
    prefix = data[:first_bad]
    line = prefix.count(b"\n") + 1
    column = first_bad - (prefix.rfind(b"\n") + 1) + 1
    raise CorpusError(
        f"bytes {data[first_bad:first_bad + 4]!r} are not valid UTF-8 (nor is the file GB18030); re-save the file as UTF-8",
        path=path, line=line, column=f"byte {column}",
    )


def _split_labels(value: Any, sep: str, path: Path, line: int, column: str) -> list[str]:
    """Labels from a list, a JSON list string, or a delimited string."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError as e:
                raise CorpusError(f"label list is not valid JSON: {e.msg}", path=path, line=line, column=column) from None
        else:
            value = s.split(sep) if sep else [s]
    if not isinstance(value, (list, tuple)):
        raise CorpusError(f"labels must be a list or a string, got {type(value).__name__}", path=path, line=line, column=column)
    out = [str(v).strip() for v in value]
    for v in out:
        if problem := _sep_problem(v):
            raise CorpusError(problem, path=path, line=line, column=column)
    return [v for v in out if v]


def _sep_problem(label: str) -> str | None:
    """A label may not contain `|`: output files join a text's labels with it, so `a|b` would read as two labels."""
    if LABEL_SEP in label:
        return f"label {label!r} contains {LABEL_SEP!r}, which joins labels in labels.csv; rename the label"
    return None


class EncodingGuessWarning(UserWarning):
    """A file was not UTF-8 and its encoding was guessed (GB18030)."""


class _Bad(Exception):
    def __init__(self, reason: str, column: str | None = None) -> None:
        self.reason, self.column = reason, column
        super().__init__(reason)


def load_corpus(
    path: str | Path,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    label_sep: str = "|",
    fmt: str | None = None,
    skip_bad: bool = False,
    header: bool | None = None,
    encoding: str | None = None,
    require_labels: bool = False,
) -> Corpus:
    """Read a dataset file into unique items; bad lines raise with file and line, or are counted under skip_bad.

    `header` (label<TAB>text files): None detects a first line of column names, True/False say so. `encoding`
    overrides the UTF-8 / GB18030 detection. `require_labels` refuses a file without a label column.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError("file not found", path=path)
    if path.is_dir():
        raise CorpusError("is a directory, not a dataset file", path=path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    skipped: list[SkippedLine] = []

    def bad(line: int, err: _Bad) -> None:
        if not skip_bad:
            raise CorpusError(err.reason, path=path, line=line, column=err.column)
        skipped.append(SkippedLine(line, err.reason))

    if fmt in ("tsv", "txt") and text_col is None:
        text, used = decode_text(path.read_bytes(), path, encoding)
        corpus = _read_label_tab_text(text.splitlines(), path, bad, plain=(fmt == "txt"), header=header)
    elif fmt == "jsonl":
        text, used = decode_text(path.read_bytes(), path, encoding)
        corpus = _read_jsonl(text.splitlines(), path, bad, text_col, label_col, label_sep, require_labels)
    elif fmt in ("csv", "tsv", "parquet"):
        corpus = _read_table(path, fmt, bad, text_col, label_col, label_sep, encoding, require_labels)
        used = corpus.encoding
    else:
        raise CorpusError(f"unknown format {fmt!r}; use .tsv, .txt, .csv, .jsonl or .parquet", path=path)
    corpus.encoding = used
    corpus.encoding_guessed = encoding is None and used == "gb18030"
    if corpus.encoding_guessed:
        warnings.warn(f"{path}: not UTF-8; read as GB18030, a guess: if the texts look wrong, give the encoding "
                      "(--encoding, e.g. latin-1)", EncodingGuessWarning, stacklevel=2)
    corpus.skipped = skipped
    if require_labels and not corpus.labeled:
        raise CorpusError("the file has no labels (a text per line, no label column)", path=path)
    if not corpus.items:
        raise CorpusError("no items found", path=path)
    return corpus


def _is_header(line: str) -> bool:
    """A first line whose two fields are both known column names (`label<TAB>text`) is a header, not an item."""
    fields = [f.strip().lower() for f in line.split("\t")]
    return len(fields) == 2 and all(f in _HEADER_NAMES for f in fields)


def _read_label_tab_text(lines: list[str], path: Path, bad, *, plain: bool, header: bool | None = None) -> Corpus:
    """`label<TAB>text` per line (the bundled corpus form); a .txt without tabs is one unlabeled text per line."""
    if plain and not any("\t" in ln for ln in lines):
        recs = [(i, ln, ()) for i, ln in enumerate(lines, 1) if ln.strip()]
        return corpus_from_records(recs, path=str(path), labeled=False)
    records = []
    first = next((i for i, ln in enumerate(lines, 1) if ln.strip()), None)
    skip_header = first is not None and (header if header is not None else _is_header(lines[first - 1]))
    for i, ln in enumerate(lines, 1):
        if not ln.strip() or (skip_header and i == first):
            continue
        try:
            if "\t" not in ln:
                raise _Bad("no tab: expected `label<TAB>text`")
            label, text = ln.split("\t", 1)
            if not label.strip():
                raise _Bad("empty label", "1")
            if not text.strip():
                raise _Bad("empty text", "2")
            if problem := _sep_problem(label.strip()):
                raise _Bad(problem, "1")
        except _Bad as e:
            bad(i, e)
            continue
        records.append((i, text, [label.strip()]))
    corpus = corpus_from_records(records, path=str(path))
    corpus.header_skipped = bool(skip_header)
    return corpus


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, path: Path, required: bool) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise CorpusError(f"no {what} column {wanted!r}; columns found: {list(columns)}", path=path)
        return wanted
    for c in defaults:
        if c in columns:
            return c
    if required:
        hint = "; name it with text_col= (relabel: --text-col)" if what == "text" else ""
        raise CorpusError(f"no {what} column (tried {list(defaults)}); columns found: {list(columns)}{hint}", path=path)
    return None


def _read_jsonl(lines: list[str], path: Path, bad, text_col, label_col, label_sep, require_labels: bool = False) -> Corpus:
    records = []
    label_key_seen = False
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as e:
                raise _Bad(f"invalid JSON: {e.msg}", str(e.colno)) from None
            if not isinstance(obj, dict):
                raise _Bad("expected a JSON object")
            tkey = _pick(list(obj), text_col, TEXT_COLUMNS, "text", path, required=True)
            lkey = _pick(list(obj), label_col, LABEL_COLUMNS, "label", path, required=require_labels) if label_col is None else label_col
            text = obj.get(tkey)
            if not isinstance(text, str) or not text.strip():
                raise _Bad("empty or non-string text", tkey)
            labels = _split_labels(obj.get(lkey), label_sep, path, i, lkey) if lkey else []
            label_key_seen |= lkey is not None and lkey in obj
        except _Bad as e:
            bad(i, e)
            continue
        records.append((i, text, labels))
    return corpus_from_records(records, path=str(path), labeled=label_key_seen)


def _read_table(path: Path, fmt: str, bad, text_col, label_col, label_sep, encoding_override: str | None = None,
                require_labels: bool = False) -> Corpus:
    import pandas as pd

    import io

    encoding = "utf-8"
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            text, encoding = decode_text(path.read_bytes(), path, encoding_override)
            with warnings.catch_warnings():
                # index_col=False: a first row with one field too many must not silently become an index column
                # (shifting every column); pandas then warns of the data it would drop, which is an error here
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str,
                                 keep_default_na=False, index_col=False)
    except CorpusError:
        raise
    except pd.errors.ParserWarning:
        raise CorpusError("more fields than the header has columns; quote texts that contain the separator",
                          path=path, line=2) from None
    except Exception as e:  # pandas raises many parser error types; all mean the same to a user
        raise CorpusError(f"can't read as {fmt}: {e}", path=path) from None
    corpus = dataframe_corpus(df, text_col=text_col, label_col=label_col, label_sep=label_sep, path=path, bad=bad,
                              first_line=2 if fmt != "parquet" else 1, require_labels=require_labels)
    corpus.encoding = encoding
    return corpus


def dataframe_corpus(df, *, text_col=None, label_col=None, label_sep="|", path=None, bad=None, first_line: int = 1,
                     require_labels: bool = False) -> Corpus:
    """Items from a pandas DataFrame with a text column and an optional label column."""
    where = Path(path) if path is not None else Path("<dataframe>")
    cols = [str(c) for c in df.columns]
    tcol = _pick(cols, text_col, TEXT_COLUMNS, "text", where, required=True)
    lcol = _pick(cols, label_col, LABEL_COLUMNS, "label", where, required=require_labels)

    def strict(line: int, err: _Bad) -> None:
        raise CorpusError(err.reason, path=where, line=line, column=err.column)

    bad = bad or strict
    records = []
    texts = df[tcol].tolist()
    labels = df[lcol].tolist() if lcol else [None] * len(texts)
    for n, (text, lab) in enumerate(zip(texts, labels)):
        line = n + first_line
        try:
            if not isinstance(text, str) or not text.strip():
                raise _Bad("empty or non-string text", tcol)
            labs = _split_labels(lab, label_sep, where, line, lcol) if lcol else []
        except _Bad as e:
            bad(line, e)
            continue
        records.append((line, text, labs))
    return corpus_from_records(records, path=str(path) if path else None, labeled=lcol is not None)
