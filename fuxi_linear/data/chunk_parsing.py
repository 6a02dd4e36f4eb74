"""Parsing one chunk of lines of a delimited text file, two ways (:func:`fuxi_linear.data.delimited.read_columns`
reads a file chunk by chunk and picks the way):

* the fast path, :func:`fast_chunk`: ``numpy.loadtxt`` (C implementation, only the needed columns), after
  :func:`fast_path_allowed` has checked the chunk's bytes (no control character, no undecodable byte, the
  same field count on every line); anything unusual raises :class:`ChunkRejected`;
* the exact path, :func:`slow_chunk`: line by line in Python, the authority on what is valid; it reports the
  first bad line as ``"<file>, line <n>, column <c> (<key>): ..."``.

Timestamps (``"decimal"`` columns) are exact decimals (never through float32), scaled by ``10**scale_digits``
and floored to int64.
"""

from __future__ import annotations

import csv
import operator
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Column", "ChunkRejected", "TOKEN_WIDTHS", "fast_path_allowed", "fast_chunk", "slow_chunk",
           "split_line", "compact_tokens", "merge_tokens"]

# Fixed widths for string columns in the fast path; a value that fills the
# whole width may have been truncated, so such a chunk takes the slow path.
TOKEN_WIDTHS = (24, 256)
_DECIMAL_WIDTH = 40

_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
# Control characters (other than the tab and line ends a file may hold between fields): never part of an id;
# numpy's fixed-width strings would even drop trailing NULs, merging two ids silently.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Files are decoded with errors="surrogateescape": undecodable bytes become
# lone surrogates, which lets the line-by-line parser point at the bad line.
_SURROGATE_RE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Column:
    """One column to extract.

    ``kind``: ``"int"`` (int64), ``"token"`` (string id, turned into int64 at
    the end when every token is a canonical integer) or ``"decimal"`` (exact
    decimal scaled by ``10**scale_digits`` and floored to int64).
    """

    key: str
    index: int
    kind: str
    scale_digits: int = 0
    allow_missing: bool = False


class ChunkRejected(Exception):
    """Internal: the numpy fast path could not handle a chunk."""


def _snippet(line: str) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= 120 else line[:117] + "...")


def _decimal_fast(strings: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised exact decimal -> scaled int64 for plain ``123`` / ``123.456`` values.

    Args:
        strings: ``(R,)`` unicode array.
        digits: scale exponent (3 turns seconds into milliseconds).

    Returns:
        ``(values (R,) int64, missing (R,) bool)``; ``missing`` marks empty or
        ``nan`` cells (their value is 0).

    Raises:
        ChunkRejected: if any cell is not a plain non-negative decimal; the
            caller then re-parses the chunk with the exact Python parser.
    """

    def split(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        head, _, frac = np.strings.partition(s, ".")
        plain = (
            np.strings.isdecimal(head)
            & (np.strings.str_len(head) <= 18)
            & ((frac == "") | np.strings.isdecimal(frac))
        )
        return head, frac, plain

    head, frac, plain = split(strings)
    missing = np.zeros(strings.shape, dtype=bool)
    if not plain.all():
        # Rare path: surrounding blanks or missing markers. Only then pay for
        # strip / comparisons on the whole chunk.
        s = np.strings.strip(strings)
        missing = (s == "") | (s == "nan") | (s == "NaN") | (s == "NAN")
        head, frac, plain = split(s)
        if not np.all(plain | missing):
            raise ChunkRejected
        head = np.where(missing, "0", head)
        frac = np.where(missing, "", frac)
    try:
        values = head.astype(np.int64) * (10**digits)
        if digits:
            # casting to a shorter string dtype keeps the first `digits` characters (np.strings.slice is
            # numpy >= 2.3 only)
            frac = np.strings.ljust(frac, digits, "0").astype(f"<U{digits}")
            values += frac.astype(np.int64)
    except (ValueError, OverflowError) as exc:  # e.g. non-ASCII decimal digits
        raise ChunkRejected from exc
    return values, missing


_CONTROL_BYTES = bytes(range(32)) + b"\x7f"


def fast_path_allowed(lines: list[str], text: str, delimiter: str, quoted: bool, num_fields: int) -> bool:
    """Whether numpy may parse a chunk: no control character, no undecodable byte, and every non-blank line
    with exactly ``num_fields`` fields. One pass over the chunk's bytes (``bytes.translate``, a few ms per 100k
    lines) in the common case; anything unusual (a blank line, quotes, a bad line) takes exact per-line checks."""
    if not text.isascii() and _SURROGATE_RE.search(text):
        return False
    data = text.encode("utf-8", "surrogateescape")
    if not data.endswith(b"\n"):
        data += b"\n"
    sep = delimiter.encode() if len(delimiter) == 1 and ord(delimiter) < 128 else b""
    # the control bytes and the separators, in file order (UTF-8 multi-byte characters hold no byte < 128)
    marks = data.translate(None, _KEEP_MARKS[sep] if sep in _KEEP_MARKS else _keep_marks(sep))
    if marks.translate(None, sep + b"\n\t\r"):
        return False  # a control character other than a tab or a line end
    if quoted and '"' in text:  # quotes may hide separators: the csv module counts
        try:
            counts = [len(r) for r in csv.reader(lines, delimiter=delimiter, strict=True)]
        except csv.Error:
            return False
        # a quoted field running over a line end joins lines: fewer records than lines
        return len(counts) == len(lines) and all(n in (num_fields, 0) for n in counts)
    if sep:
        # (num_fields - 1) separators then a line end, line after line: every line has num_fields fields
        pattern = marks.translate(None, b"\r" if sep == b"\t" else b"\t\r")
        if pattern == (sep * (num_fields - 1) + b"\n") * (len(pattern) // num_fields):
            return True
    want = num_fields - 1  # exact, per line: blank lines break the pattern above
    counts = np.fromiter(map(operator.methodcaller("count", delimiter), lines), dtype=np.int64, count=len(lines))
    return all(not lines[i].strip() for i in np.flatnonzero(counts != want))


def _keep_marks(sep: bytes) -> bytes:
    """The bytes ``bytes.translate`` deletes to keep only control bytes and ``sep`` (cached per separator)."""
    keep = set(_CONTROL_BYTES) | set(sep)
    _KEEP_MARKS[sep] = bytes(b for b in range(256) if b not in keep)
    return _KEEP_MARKS[sep]


_KEEP_MARKS: dict = {}


def fast_chunk(
    lines: list[str],
    columns: Sequence[Column],
    delimiter: str,
    quoted: bool,
    *,
    decimals_as_int: bool,
    token_width: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Parse a chunk with numpy; raises ``ChunkRejected`` on anything unusual (the caller has checked the
    field counts).

    With ``decimals_as_int`` decimal columns are read directly as int64 (the
    common integer-timestamp case, several times faster than string
    handling); a cell with a fraction then rejects the chunk and the caller
    retries with strings. Token columns are read as ``U<token_width>``.
    """
    order = sorted(columns, key=lambda c: c.index)

    def field_dtype(c: Column) -> Any:
        if c.kind == "int" or (c.kind == "decimal" and decimals_as_int):
            return np.int64
        return f"U{token_width if c.kind == 'token' else _DECIMAL_WIDTH}"

    dtype = np.dtype([(c.key, field_dtype(c)) for c in order])
    try:
        with warnings.catch_warnings():
            # numpy warns that blank lines do not count towards max_rows; harmless here.
            warnings.simplefilter("ignore", UserWarning)
            # Older numpy parses "1.5" as an int via float with a
            # DeprecationWarning; that would silently truncate, so refuse it.
            warnings.simplefilter("error", DeprecationWarning)
            table = np.loadtxt(
                lines,
                dtype=dtype,
                delimiter=delimiter,
                usecols=[c.index for c in order],
                comments=None,
                quotechar='"' if quoted else None,
                ndmin=1,
            )
    except (ValueError, IndexError, OverflowError, DeprecationWarning) as exc:
        raise ChunkRejected from exc
    out: dict[str, np.ndarray] = {}
    drop = np.zeros(table.shape[0], dtype=bool)
    for c in columns:
        col = table[c.key]
        if c.kind == "int":
            out[c.key] = np.ascontiguousarray(col, dtype=np.int64)
        elif c.kind == "token":
            if col.size and np.strings.str_len(col).max() >= token_width:
                raise ChunkRejected
            col = np.strings.strip(col)
            if np.any(col == ""):
                raise ChunkRejected
            out[c.key] = col
        elif decimals_as_int:
            values = np.ascontiguousarray(col, dtype=np.int64)
            if c.scale_digits:
                limit = (1 << 63) // 10**c.scale_digits
                if values.size and (values.max() >= limit or values.min() <= -limit):
                    raise ChunkRejected
                values = values * 10**c.scale_digits
            out[c.key] = values
        else:
            if col.size and np.strings.str_len(col).max() >= _DECIMAL_WIDTH:
                raise ChunkRejected
            values, missing = _decimal_fast(col, c.scale_digits)
            if missing.any() and not c.allow_missing:
                raise ChunkRejected
            drop |= missing
            out[c.key] = values
    return out, drop


def _parse_cell(cell: str, column: Column) -> int | str | None:
    """Exact Python parse of one cell; ``None`` means a (permitted) missing value."""
    if column.kind == "int":
        if not _INT_RE.fullmatch(cell):
            raise ValueError(f"expected an integer, got {cell!r}")
        value = int(cell)
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"integer {cell!r} does not fit in int64")
        return value
    if column.kind == "token":
        token = cell.strip()
        if not token:
            raise ValueError("empty id")
        if _SURROGATE_RE.search(token):
            raise ValueError(f"id {token!r} contains bytes that are invalid in this encoding")
        if _CONTROL_RE.search(token):
            raise ValueError(f"id {token!r} contains a control character")
        return token
    text = cell.strip()
    if text == "" or text.lower() == "nan":
        if column.allow_missing:
            return None
        raise ValueError("missing timestamp")
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"expected a number, got {cell!r}") from None
    if not dec.is_finite():
        raise ValueError(f"expected a finite number, got {cell!r}")
    value = int(dec.scaleb(column.scale_digits).to_integral_value(rounding=ROUND_FLOOR))
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"timestamp {cell!r} does not fit in int64")
    return value


def slow_chunk(
    path: Path,
    lines: list[str],
    first_line_no: int,
    columns: Sequence[Column],
    delimiter: str,
    quoted: bool,
    num_fields: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Line-by-line parse; raises ValueError naming the file and 1-based line."""
    values: dict[str, list[Any]] = {c.key: [] for c in columns}
    drop: list[bool] = []
    for offset, line in enumerate(lines):
        line_no = first_line_no + offset
        if not line.strip():
            continue
        if quoted:
            try:
                cells = next(csv.reader([line], delimiter=delimiter, strict=True))
            except csv.Error as exc:
                raise ValueError(f"{path}, line {line_no}: malformed quoting ({exc}): {_snippet(line)}") from None
        else:
            cells = line.rstrip("\r\n").split(delimiter)
        if len(cells) != num_fields:
            raise ValueError(
                f"{path}, line {line_no}: expected {num_fields} fields separated by "
                f"{delimiter!r}, found {len(cells)}: {_snippet(line)}"
            )
        parsed: list[Any] = []
        missing = False
        for c in columns:
            try:
                v = _parse_cell(cells[c.index], c)
            except ValueError as exc:
                hint = (
                    " (undecodable bytes for this encoding)"
                    if c.kind != "token" and _SURROGATE_RE.search(cells[c.index])
                    else ""
                )
                raise ValueError(
                    f"{path}, line {line_no}, column {c.index + 1} ({c.key}): {exc}{hint}: {_snippet(line)}"
                ) from None
            if v is None:
                missing = True
                v = 0
            parsed.append(v)
        for c, v in zip(columns, parsed):
            values[c.key].append(v)
        drop.append(missing)
    out: dict[str, np.ndarray] = {}
    for c in columns:
        if c.kind == "token":
            out[c.key] = np.array(values[c.key], dtype=str)
        else:
            out[c.key] = np.array(values[c.key], dtype=np.int64)
    return out, np.array(drop, dtype=bool)


def split_line(line: str, delimiter: str, quoted: bool) -> list[str]:
    if quoted:
        try:
            return next(csv.reader([line], delimiter=delimiter, strict=True))
        except (csv.Error, StopIteration):
            return []
    return line.rstrip("\r\n").split(delimiter)


def compact_tokens(tokens: np.ndarray) -> np.ndarray:
    """Shrink a chunk of string ids.

    Returns int64 when every token is a canonical integer (``"12"``, not
    ``"012"`` or ``"+12"``), else a unicode array only as wide as its longest
    token (the fast path reads tokens into a wide fixed-width buffer).
    """
    if tokens.size == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        as_int = tokens.astype(np.int64)
    except (ValueError, OverflowError):
        as_int = None
    if as_int is not None and np.array_equal(as_int.astype(tokens.dtype), tokens):
        return as_int
    width = max(1, int(np.strings.str_len(tokens).max()))
    return tokens.astype(f"U{width}")


def merge_tokens(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate compacted token chunks; any string chunk makes all ids strings."""
    if all(p.dtype == np.int64 for p in parts):
        return np.concatenate(parts)
    return np.concatenate([p.astype(str) if p.dtype == np.int64 else p for p in parts])
