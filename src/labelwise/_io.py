"""Crash-safe file writes: a file is either its old self or complete, never half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = ["bundled", "atomic_write_text", "atomic_write_bytes", "atomic_write_lines", "atomic_write_json", "append_jsonl",
           "read_jsonl_repairing", "repair_torn_tail", "iter_jsonl_lines", "spreadsheet_safe", "spreadsheet_value",
           "write_spreadsheet_csv", "write_spreadsheet_csv_rows"]

# A cell starting with one of these is run as a formula by spreadsheet apps (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def bundled(package: str) -> Path:
    """Directory of files shipped inside labelwise (prompts, the bundled corpus), installed or from a checkout."""
    from importlib.resources import files

    return Path(str(files(package)))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    atomic_write_lines(path, [data])


def atomic_write_lines(path: str | Path, chunks: Iterable[bytes]) -> int:
    """Atomically write byte chunks as they come (a file larger than memory); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    n = 0
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions a plain open() would
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic UTF-8 text write."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write, UTF-8, readable indentation."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def append_jsonl(f, obj: Any) -> None:
    """Append one JSON line in a single write, so a kill can tear at most the last line."""
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    f.flush()


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, prefixed with `'` (shown as text); others as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def spreadsheet_value(cell: str) -> str:
    """The original text of a cell `spreadsheet_safe` escaped (reading our own CSVs back)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] and cell[1:2] in _FORMULA_START else cell


def write_spreadsheet_csv(path: str | Path, df) -> None:
    """Atomically write a DataFrame as CSV for spreadsheet apps: UTF-8 with BOM, formula-like text cells escaped."""
    safe = df.map(spreadsheet_safe)  # every column: pandas may hold text as object or as its string dtype
    safe.columns = [spreadsheet_safe(str(c)) for c in safe.columns]
    atomic_write_bytes(path, safe.to_csv(index=False).encode("utf-8-sig"))  # BOM so Excel reads the Chinese text right


def write_spreadsheet_csv_rows(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Atomically write rows as they come, byte for byte as `write_spreadsheet_csv` would write the same DataFrame.

    Nothing but one block of rows is held at a time, so a run's CSVs cost no memory per row. None is an empty cell,
    a bool `True`/`False`, a float its shortest repr (as pandas writes them); returns how many rows were written.
    """
    count = 0

    def blocks() -> Iterator[bytes]:
        nonlocal count
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow([spreadsheet_safe(str(c)) for c in header])
        yield "\ufeff".encode("utf-8") + buf.getvalue().encode("utf-8")
        buf.seek(0), buf.truncate()
        for row in rows:
            out.writerow([spreadsheet_safe(v) for v in row])
            count += 1
            if buf.tell() > 1 << 16:
                yield buf.getvalue().encode("utf-8")
                buf.seek(0), buf.truncate()
        yield buf.getvalue().encode("utf-8")

    atomic_write_lines(path, blocks())
    return count


def parse_yaml(text: str, path: str | Path, error: type[Exception]) -> Any:
    """YAML from `text`; a syntax error becomes `error` naming the file, line and column."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise error(f"invalid YAML: {getattr(e, 'problem', None) or e}", path=path,
                    line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None) from None


def read_jsonl_repairing(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of a file, truncating a torn last line in place; returns (rows, bytes cut)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    cut = 0
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        cut = len(data) - keep
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            from ._exceptions import RunError

            raise RunError(f"{path}, line {n}: not valid JSON ({e.msg}); fix or remove that line") from None
    return rows, cut


def repair_torn_tail(path: str | Path) -> int:
    """Truncate a torn (unterminated) last line of a JSONL file in place; returns the bytes cut (0 if none)."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos, keep = size, 0
        while pos > 0:  # look back block by block for the last newline
            start = max(0, pos - (1 << 16))
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        return size - keep


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(byte offset, raw line, parsed object) of each non-blank line, read as a stream; a bad line names its number."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        offset = 0
        for n, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                yield start, line, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                from ._exceptions import RunError

                raise RunError(f"{path}, line {n}: not valid JSON ({getattr(e, 'msg', e)}); fix or remove that line") from None


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Atomically (re)write a whole JSONL file."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
