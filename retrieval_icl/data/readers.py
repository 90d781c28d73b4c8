"""The rows of a user's example file (JSON Lines, CSV or Parquet), each with where it sits: `path:line` for text
files, `path row N` for Parquet, which has no lines. Every problem with the file is a RiclError naming it."""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import RiclError
from ..yaml_config import not_utf8

if TYPE_CHECKING:
    import pyarrow as pa

Rows = Iterator[tuple[str, dict]]  # (where the row is, {column: value})


def _utf8_lines(path: Path) -> Iterator[str]:
    """The file's lines, a leading UTF-8 byte-order mark dropped; bytes that are not UTF-8 text are an error."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise RiclError(f"{path}: cannot read ({e.strerror})")
    with f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # accepted and dropped: Excel and Notepad write it
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, line_no, raw, e.start)
            if "\0" in line:  # never in JSON or in text a person wrote: a binary file, or UTF-16 without a BOM
                raise RiclError(f"{path}:{line_no}: a NUL byte at column {line.index(chr(0)) + 1}; expected UTF-8 text "
                                "(is this a binary or UTF-16 file?)")
            yield line


def rows_jsonl(path: Path) -> Rows:
    """(`path:line`, object) for each non-blank line of a JSON Lines file (examples, and records.jsonl of results)."""
    for line_no, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RiclError(f"{path}:{line_no}: not valid JSON ({e.msg}, column {e.colno}); "
                            "expected one JSON object per line")
        except (ValueError, RecursionError):  # json's limits: integers over 4300 digits, nesting past the stack
            raise RiclError(f"{path}:{line_no}: not valid JSON (a number too long or nesting too deep); "
                            "expected one JSON object per line")
        if not isinstance(row, dict):
            raise RiclError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:{line_no}", row


def _ragged(path: Path, start: int, end: int, row: list[str], header: list[str]) -> RiclError:
    """A row whose field count differs from the header's: said, not guessed at (a stray comma shifts the label)."""
    runs_on = f"; the row runs on to line {end}: an unclosed quote?" if end > start else ""
    return RiclError(f"{path}:{start}: {len(row)} field(s), expected {len(header)} like the header "
                     f"({','.join(header)}){runs_on}")


def _rows_csv(path: Path) -> Rows:
    """(`path:first line`, {column: value}) for each row of a CSV file with a header line; blank lines are skipped."""
    reader, header, end = csv.reader(_utf8_lines(path)), None, 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue
            if header is None:
                header = _distinct_columns(f"{path}:{start}", row, "the header")
            elif len(row) != len(header):
                raise _ragged(path, start, end, row, header)
            else:
                yield f"{path}:{start}", dict(zip(header, row))
    except csv.Error as e:
        raise RiclError(f"{path}:{reader.line_num}: not valid CSV ({e})")


def _distinct_columns(where: str, names: list[str], place: str) -> list[str]:
    """The column names; a repeated one is an error, as a dict would silently keep only its last value."""
    for name in names:
        if names.count(name) > 1:
            raise RiclError(f"{where}: column {name!r} appears {names.count(name)} times in {place}; "
                            "expected distinct column names")
    return names


def _rows_parquet(path: Path) -> Rows:
    """(`path row N`, {column: value}) for each row of a Parquet file, N counted from 0 (the row's position, as
    pandas and datasets count it), read a batch at a time; a file pyarrow cannot read is one error."""
    import pyarrow as pa  # imported here: reading JSONL and CSV, and loading an index, need no pyarrow
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as f:
            _distinct_columns(str(path), f.schema_arrow.names, "the schema")
            n = 0
            for batch in f.iter_batches():
                for row in _batch_rows(path, batch, n):
                    yield f"{path} row {n}", row
                    n += 1
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # ArrowInvalid: corrupt; OSError: unreadable bytes
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RiclError(f"{path}: not a readable Parquet file ({reason}); expected a Parquet table with one row "
                        "per example")


def _batch_rows(path: Path, batch: pa.RecordBatch, first: int) -> list[dict]:
    """A record batch's rows; a string that is not UTF-8 (pyarrow decodes only here) is an error naming its row."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        for i in range(batch.num_rows):
            for name, column in zip(batch.schema.names, batch.columns):
                try:
                    column[i].as_py()
                except UnicodeDecodeError as e:
                    raise RiclError(f"{path} row {first + i}: column {name!r} is not UTF-8 text (byte "
                                    f"{e.object[e.start]:#04x} at position {e.start + 1}); expected UTF-8 strings")
        raise  # not found row by row: the caller reports the file as unreadable


# Each example file type: its row reader and the layout an empty file is missing.
READERS: dict[str, tuple[Callable[[Path], Rows], str]] = {
    ".jsonl": (rows_jsonl, "one JSON object per line"), ".json": (rows_jsonl, "one JSON object per line"),
    ".csv": (_rows_csv, "a header line, then one row per example"),
    ".parquet": (_rows_parquet, "a Parquet table with one row per example")}
