"""A fast, strict reader of delimited text files (the parser behind every dataset loader).

:func:`read_columns` reads a file in chunks of lines; each chunk is parsed by ``numpy.loadtxt`` (C
implementation, only the needed columns). If numpy rejects a chunk, the chunk is re-parsed line by line in
Python; that slow path is the authority on what is valid and reports the first bad line as
``"<file>, line <n>: ..."`` (1-based line numbers, header included; ``\n``, ``\r\n`` and ``\r`` end a line).
Both parsers of a chunk are in :mod:`fuxi_linear.data.chunk_parsing`; this module reads the file.
Every data line must have the same number of fields (the header's, or the first data line's when there is no
header): a line with more or fewer is an error -- two records run together, or a value holding the
delimiter, would otherwise be read as one record, wrongly. Blank lines are skipped. Ids may not contain
control characters. Quoted fields spanning several physical lines are not supported (an unbalanced quote is
an error on its line).

Timestamps (``"decimal"`` columns) are parsed as exact decimals (never through float32): e.g. the KuaiRec
value ``"1593878903.438"`` seconds becomes ``1593878903438`` milliseconds with ``scale_digits=3``. Sub-unit
digits beyond the target unit are truncated toward minus infinity.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .chunk_parsing import (TOKEN_WIDTHS, ChunkRejected, Column, compact_tokens, fast_chunk, fast_path_allowed,
                            merge_tokens, slow_chunk, split_line)

__all__ = ["Column", "check_file", "find_columns", "read_columns", "read_header"]

# Lines per parsing chunk: large enough to amortise numpy call overhead,
# small enough that the Python strings of one chunk stay ~100 MB.
_CHUNK_LINES = 1 << 19


def check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if not path.is_file():
        raise ValueError(f"expected a file, got a directory or special file: {path}")


def read_header(path: Path, delimiter: str, encoding: str, quoted: bool) -> list[str]:
    """Return the stripped cells of the first non-blank line of ``path``."""
    with open(path, encoding=encoding, errors="surrogateescape", newline="") as fh:
        for line in fh:
            if line.strip():
                if quoted:
                    cells = next(csv.reader([line], delimiter=delimiter))
                else:
                    cells = line.rstrip("\r\n").split(delimiter)
                return [c.strip() for c in cells]
    raise ValueError(f"{path}: file is empty, expected a header line")


def find_columns(path: Path, header: list[str], wanted: Sequence[str]) -> list[int]:
    """Indices of ``wanted`` names in ``header``; ValueError naming what is missing."""
    missing = [w for w in wanted if w not in header]
    if missing:
        raise ValueError(
            f"{path}: header is missing column(s) {missing}; found columns {header}"
        )
    return [header.index(w) for w in wanted]


def _first_field_count(lines: list[str], delimiter: str, quoted: bool) -> int | None:
    """Fields of the first non-blank line (None if every line is blank)."""
    for line in lines:
        if line.strip():
            return len(split_line(line, delimiter, quoted)) or None
    return None


def read_columns(
    path: Path,
    columns: Sequence[Column],
    *,
    delimiter: str,
    encoding: str = "utf-8-sig",
    skip_header: bool,
    quoted: bool = False,
    replace: tuple[str, str] | None = None,
    num_fields: int | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Extract ``columns`` from a delimited text file.

    Args:
        path: the file.
        columns: columns to extract (distinct ``key`` and ``index``).
        delimiter: single-character field separator (after ``replace``).
        encoding: text encoding; undecodable bytes are kept as surrogates so
            the error message can still point at the offending line.
        skip_header: skip the first non-blank line.
        quoted: honour ``"``-quoted fields.
        replace: ``(old, new)`` substitution applied to every line before
            splitting (used for MovieLens-1M's two-character ``::`` separator).
        num_fields: the number of fields every data line has (the header's
            length); None: that of the first non-blank data line. A line
            with another number is an error naming it.

    Returns:
        ``(arrays, num_dropped)``: ``arrays[key]`` is ``(R,)`` int64 (or
        unicode for token columns) in file order; ``num_dropped`` counts rows
        removed because a column with ``allow_missing`` was empty / ``nan``.
    """
    chunks: dict[str, list[np.ndarray]] = {c.key: [] for c in columns}
    has_decimal = any(c.kind == "decimal" for c in columns)
    has_token = any(c.kind == "token" for c in columns)
    attempts = [
        (as_int, width)
        for as_int in ((True, False) if has_decimal else (False,))
        for width in (TOKEN_WIDTHS if has_token else TOKEN_WIDTHS[:1])
    ]
    attempt = 0
    num_dropped = 0
    line_no = 1
    with open(path, encoding=encoding, errors="surrogateescape", newline=None) as fh:
        if skip_header:
            for line in fh:
                line_no += 1
                if line.strip():
                    break
        while True:
            lines = list(itertools.islice(fh, _CHUNK_LINES))
            if not lines:
                break
            if replace is not None:
                old, new = replace
                lines = [ln.replace(old, new) for ln in lines]
            out, drop = None, None
            text = "".join(lines)
            if not text.strip():  # only blank lines (e.g. a file's trailing newlines alone in the last chunk)
                line_no += len(lines)
                continue
            if num_fields is None:
                first = _first_field_count(lines, delimiter, quoted)
                if first is None:  # only blank lines so far
                    line_no += len(lines)
                    continue
                # too few for the columns wanted: the first line itself fails, with its number
                num_fields = max(first, max(c.index for c in columns) + 1)
            # Undecodable bytes and control characters must go through the exact parser (a token
            # column would otherwise accept them silently), and so must lines with another field count.
            clean = fast_path_allowed(lines, text, delimiter, quoted, num_fields)
            # Fast attempts from cheapest to most general; a successful
            # setting is kept for the following chunks (files are uniform).
            while clean and attempt < len(attempts):
                as_int, width = attempts[attempt]
                try:
                    out, drop = fast_chunk(
                        lines, columns, delimiter, quoted, decimals_as_int=as_int, token_width=width
                    )
                    break
                except ChunkRejected:
                    attempt += 1
            if out is None or drop is None:
                out, drop = slow_chunk(path, lines, line_no, columns, delimiter, quoted, num_fields)
                # A bad chunk says nothing about the next one: start over.
                attempt = 0
            if drop.any():
                keep = ~drop
                out = {k: v[keep] for k, v in out.items()}
                num_dropped += int(drop.sum())
            for c in columns:
                arr = out[c.key]
                chunks[c.key].append(compact_tokens(arr) if c.kind == "token" else arr)
            line_no += len(lines)
    result: dict[str, np.ndarray] = {}
    for c in columns:
        parts = chunks[c.key]
        if not parts:
            result[c.key] = np.zeros(0, dtype=np.int64)
        elif c.kind == "token":
            result[c.key] = merge_tokens(parts)
        else:
            result[c.key] = np.concatenate(parts)
    return result, num_dropped
