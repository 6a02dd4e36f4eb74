"""Readers for the public recommendation datasets used by FuXi-Linear.

Every ``load_*`` function parses one file format into an
:class:`~fuxi_linear.data.interactions.InteractionLog` (users remapped to
``0..U-1``, items to ``1..N``, events stably sorted by user, timestamp and
file row). :func:`load_dataset` dispatches by dataset name, resolves a
directory to the dataset's standard file name and optionally caches the
preprocessed log as ``.npz``.

Parsing strategy: the file is read in chunks of lines and each chunk is parsed
by ``numpy.loadtxt`` (C implementation, only the needed columns). If numpy
rejects a chunk, the chunk is re-parsed line by line in Python; that slow path
is the authority on what is valid and reports the first bad line as
``"<file>, line <n>: ..."`` (1-based physical line numbers, header included).
Lines may carry extra trailing fields (they are ignored); blank lines are
skipped. Quoted fields spanning several physical lines are not supported.

Timestamps are parsed as exact decimals (never through float32): e.g. the
KuaiRec value ``"1593878903.438"`` seconds becomes ``1593878903438``
milliseconds. Sub-unit digits beyond the target unit are truncated toward
minus infinity.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from .interactions import VALID_TIMESTAMP_UNITS, InteractionLog

__all__ = [
    "DATASET_NAMES",
    "DATASET_TIMESTAMP_UNITS",
    "default_temporal_periods",
    "load_csv",
    "load_dataset",
    "load_kuairand",
    "load_kuairec",
    "load_movielens_100k",
    "load_movielens_1m",
    "load_movielens_20m",
    "load_recbole",
]

PathLike = str | os.PathLike[str]

DATASET_NAMES: tuple[str, ...] = (
    "ml-100k",
    "ml-1m",
    "ml-20m",
    "kuairec",
    "kuairand",
    "recbole",
    "csv",
    "synthetic",
)

#: Unit of the timestamps each built-in loader produces (``None``: depends on
#: the loader arguments).
DATASET_TIMESTAMP_UNITS: dict[str, str | None] = {
    "ml-100k": "s",
    "ml-1m": "s",
    "ml-20m": "s",
    "kuairec": "ms",
    "kuairand": "ms",
    "recbole": None,
    "csv": None,
    "synthetic": "s",
}

# Lines per parsing chunk: large enough to amortise numpy call overhead,
# small enough that the Python strings of one chunk stay ~100 MB.
_CHUNK_LINES = 1 << 19
# Fixed widths for string columns in the fast path; a value that fills the
# whole width may have been truncated, so such a chunk takes the slow path.
_TOKEN_WIDTHS = (24, 256)
_DECIMAL_WIDTH = 40
# Bumped when the parsing or preprocessing semantics change, so stale cache
# entries are never reused.
_CACHE_VERSION = 1

_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
# Files are decoded with errors="surrogateescape": undecodable bytes become
# lone surrogates, which lets the line-by-line parser point at the bad line.
_SURROGATE_RE = re.compile("[\udc80-\udcff]")


def default_temporal_periods(timestamp_unit: str) -> dict[str, int]:
    """Default periodic-encoding hyper-parameters for a timestamp unit.

    The temporal channel encodes time differences with periods
    ``base ** (start + stride * k)`` for ``k = 0 .. num_periods - 1``.

    Args:
        timestamp_unit: ``"s"`` or ``"ms"``.

    Returns:
        ``{"base", "start", "stride", "num_periods"}``: ``ms`` gives base 2,
        start 10, stride 3, 8 periods; ``s`` gives base 16, start 0, stride 1,
        8 periods.
    """
    if timestamp_unit == "ms":
        return {"base": 2, "start": 10, "stride": 3, "num_periods": 8}
    if timestamp_unit == "s":
        return {"base": 16, "start": 0, "stride": 1, "num_periods": 8}
    raise ValueError(f"timestamp_unit must be one of {VALID_TIMESTAMP_UNITS}, got {timestamp_unit!r}")


# --------------------------------------------------------------------------
# Low-level delimited-text reader
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
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


class _ChunkRejected(Exception):
    """Internal: the numpy fast path could not handle a chunk."""


def _snippet(line: str) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= 120 else line[:117] + "...")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if not path.is_file():
        raise ValueError(f"expected a file, got a directory or special file: {path}")


def _read_header(path: Path, delimiter: str, encoding: str, quoted: bool) -> list[str]:
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


def _find_columns(path: Path, header: list[str], wanted: Sequence[str]) -> list[int]:
    """Indices of ``wanted`` names in ``header``; ValueError naming what is missing."""
    missing = [w for w in wanted if w not in header]
    if missing:
        raise ValueError(
            f"{path}: header is missing column(s) {missing}; found columns {header}"
        )
    return [header.index(w) for w in wanted]


def _decimal_fast(strings: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised exact decimal -> scaled int64 for plain ``123`` / ``123.456`` values.

    Args:
        strings: ``(R,)`` unicode array.
        digits: scale exponent (3 turns seconds into milliseconds).

    Returns:
        ``(values (R,) int64, missing (R,) bool)``; ``missing`` marks empty or
        ``nan`` cells (their value is 0).

    Raises:
        _ChunkRejected: if any cell is not a plain non-negative decimal; the
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
            raise _ChunkRejected
        head = np.where(missing, "0", head)
        frac = np.where(missing, "", frac)
    try:
        values = head.astype(np.int64) * (10**digits)
        if digits:
            frac = np.strings.slice(np.strings.ljust(frac, digits, "0"), 0, digits)
            values += frac.astype(np.int64)
    except (ValueError, OverflowError) as exc:  # e.g. non-ASCII decimal digits
        raise _ChunkRejected from exc
    return values, missing


def _fast_chunk(
    lines: list[str],
    columns: Sequence[_Column],
    delimiter: str,
    quoted: bool,
    *,
    decimals_as_int: bool,
    token_width: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Parse a chunk with numpy; raises ``_ChunkRejected`` on anything unusual.

    With ``decimals_as_int`` decimal columns are read directly as int64 (the
    common integer-timestamp case, several times faster than string
    handling); a cell with a fraction then rejects the chunk and the caller
    retries with strings. Token columns are read as ``U<token_width>``.
    """
    order = sorted(columns, key=lambda c: c.index)

    def field_dtype(c: _Column) -> Any:
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
        raise _ChunkRejected from exc
    out: dict[str, np.ndarray] = {}
    drop = np.zeros(table.shape[0], dtype=bool)
    for c in columns:
        col = table[c.key]
        if c.kind == "int":
            out[c.key] = np.ascontiguousarray(col, dtype=np.int64)
        elif c.kind == "token":
            if col.size and np.strings.str_len(col).max() >= token_width:
                raise _ChunkRejected
            col = np.strings.strip(col)
            if np.any(col == ""):
                raise _ChunkRejected
            out[c.key] = col
        elif decimals_as_int:
            values = np.ascontiguousarray(col, dtype=np.int64)
            if c.scale_digits:
                limit = (1 << 63) // 10**c.scale_digits
                if values.size and (values.max() >= limit or values.min() <= -limit):
                    raise _ChunkRejected
                values = values * 10**c.scale_digits
            out[c.key] = values
        else:
            if col.size and np.strings.str_len(col).max() >= _DECIMAL_WIDTH:
                raise _ChunkRejected
            values, missing = _decimal_fast(col, c.scale_digits)
            if missing.any() and not c.allow_missing:
                raise _ChunkRejected
            drop |= missing
            out[c.key] = values
    return out, drop


def _parse_cell(cell: str, column: _Column) -> int | str | None:
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


def _slow_chunk(
    path: Path,
    lines: list[str],
    first_line_no: int,
    columns: Sequence[_Column],
    delimiter: str,
    quoted: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Line-by-line parse; raises ValueError naming the file and 1-based line."""
    needed = max(c.index for c in columns) + 1
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
        if len(cells) < needed:
            raise ValueError(
                f"{path}, line {line_no}: expected at least {needed} fields separated by "
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


def _compact_tokens(tokens: np.ndarray) -> np.ndarray:
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


def _merge_tokens(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate compacted token chunks; any string chunk makes all ids strings."""
    if all(p.dtype == np.int64 for p in parts):
        return np.concatenate(parts)
    return np.concatenate([p.astype(str) if p.dtype == np.int64 else p for p in parts])


def _read_columns(
    path: Path,
    columns: Sequence[_Column],
    *,
    delimiter: str,
    encoding: str = "utf-8-sig",
    skip_header: bool,
    quoted: bool = False,
    replace: tuple[str, str] | None = None,
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
        for width in (_TOKEN_WIDTHS if has_token else _TOKEN_WIDTHS[:1])
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
            # Undecodable bytes must go through the exact parser (a token
            # column would otherwise accept them silently).
            clean = text.isascii() or not _SURROGATE_RE.search(text)
            # Fast attempts from cheapest to most general; a successful
            # setting is kept for the following chunks (files are uniform).
            while clean and attempt < len(attempts):
                as_int, width = attempts[attempt]
                try:
                    out, drop = _fast_chunk(
                        lines, columns, delimiter, quoted, decimals_as_int=as_int, token_width=width
                    )
                    break
                except _ChunkRejected:
                    attempt += 1
            if out is None or drop is None:
                out, drop = _slow_chunk(path, lines, line_no, columns, delimiter, quoted)
                # A bad chunk says nothing about the next one: start over.
                attempt = 0
            if drop.any():
                keep = ~drop
                out = {k: v[keep] for k, v in out.items()}
                num_dropped += int(drop.sum())
            for c in columns:
                arr = out[c.key]
                chunks[c.key].append(_compact_tokens(arr) if c.kind == "token" else arr)
            line_no += len(lines)
    result: dict[str, np.ndarray] = {}
    for c in columns:
        parts = chunks[c.key]
        if not parts:
            result[c.key] = np.zeros(0, dtype=np.int64)
        elif c.kind == "token":
            result[c.key] = _merge_tokens(parts)
        else:
            result[c.key] = np.concatenate(parts)
    return result, num_dropped


def _build_log(
    path_desc: str,
    arrays: dict[str, np.ndarray],
    *,
    timestamp_unit: str,
    name: str,
) -> InteractionLog:
    if arrays["user"].size == 0:
        raise ValueError(f"{path_desc}: no interactions found")
    return InteractionLog.from_arrays(
        arrays["user"], arrays["item"], arrays["time"], timestamp_unit=timestamp_unit, name=name
    )


def _as_path(arg: str, value: object) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike, got {type(value).__name__}")
    return Path(value)


def _check_unit(arg: str, unit: object) -> str:
    if unit not in VALID_TIMESTAMP_UNITS:
        raise ValueError(f"{arg} must be one of {VALID_TIMESTAMP_UNITS}, got {unit!r}")
    return str(unit)


# --------------------------------------------------------------------------
# Dataset-specific loaders
# --------------------------------------------------------------------------


def load_movielens_100k(path: PathLike) -> InteractionLog:
    """Load MovieLens-100K ``u.data`` (``user<TAB>item<TAB>rating<TAB>unix seconds``).

    Every rating counts as one implicit interaction. Timestamps in seconds.
    """
    p = _as_path("path", path)
    _check_file(p)
    cols = [_Column("user", 0, "int"), _Column("item", 1, "int"), _Column("time", 3, "decimal")]
    arrays, _ = _read_columns(p, cols, delimiter="\t", skip_header=False)
    return _build_log(str(p), arrays, timestamp_unit="s", name="ml-100k")


def load_movielens_1m(path: PathLike) -> InteractionLog:
    """Load MovieLens-1M ``ratings.dat`` (``user::item::rating::seconds``, latin-1)."""
    p = _as_path("path", path)
    _check_file(p)
    cols = [_Column("user", 0, "int"), _Column("item", 1, "int"), _Column("time", 3, "decimal")]
    # "::" is rewritten to a tab so numpy's single-character splitter can be used;
    # the file never contains tabs.
    arrays, _ = _read_columns(
        p, cols, delimiter="\t", encoding="latin-1", skip_header=False, replace=("::", "\t")
    )
    return _build_log(str(p), arrays, timestamp_unit="s", name="ml-1m")


def load_movielens_20m(path: PathLike) -> InteractionLog:
    """Load MovieLens-20M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)."""
    p = _as_path("path", path)
    _check_file(p)
    header = _read_header(p, ",", "utf-8-sig", quoted=True)
    u, i, t = _find_columns(p, header, ["userId", "movieId", "timestamp"])
    cols = [_Column("user", u, "int"), _Column("item", i, "int"), _Column("time", t, "decimal")]
    arrays, _ = _read_columns(p, cols, delimiter=",", skip_header=True, quoted=True)
    return _build_log(str(p), arrays, timestamp_unit="s", name="ml-20m")


def load_kuairec(path: PathLike, *, drop_missing_timestamps: bool = True) -> InteractionLog:
    """Load KuaiRec ``big_matrix.csv`` (or ``small_matrix.csv``).

    Uses columns ``user_id``, ``video_id`` and ``timestamp`` (float seconds
    such as ``1593878903.438``), converted exactly to int64 milliseconds.

    Args:
        path: the CSV file.
        drop_missing_timestamps: rows whose timestamp is empty / ``nan`` are
            dropped with a warning when True; when False they raise
            ValueError with the line number.
    """
    p = _as_path("path", path)
    _check_file(p)
    header = _read_header(p, ",", "utf-8-sig", quoted=True)
    u, i, t = _find_columns(p, header, ["user_id", "video_id", "timestamp"])
    cols = [
        _Column("user", u, "int"),
        _Column("item", i, "int"),
        _Column("time", t, "decimal", scale_digits=3, allow_missing=drop_missing_timestamps),
    ]
    arrays, dropped = _read_columns(p, cols, delimiter=",", skip_header=True, quoted=True)
    if dropped:
        warnings.warn(f"{p}: dropped {dropped} rows with a missing timestamp", stacklevel=2)
    return _build_log(str(p), arrays, timestamp_unit="ms", name="kuairec")


def _kuairand_files(path: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("log_standard_*.csv"), key=lambda f: f.name)
            if not files and (p / "data").is_dir():
                files = sorted((p / "data").glob("log_standard_*.csv"), key=lambda f: f.name)
            if not files:
                raise FileNotFoundError(f"no log_standard_*.csv files found in directory {p}")
            return files
        _check_file(p)
        return [p]
    if isinstance(path, Sequence) and not isinstance(path, (bytes, bytearray)):
        files = [_as_path("path[]", f) for f in path]
        if not files:
            raise ValueError("path must name at least one KuaiRand log file")
        for f in files:
            _check_file(f)
        # Sorted by file name so the result does not depend on argument order.
        return sorted(files, key=lambda f: f.name)
    raise TypeError(
        f"path must be a directory, a file or a list of files, got {type(path).__name__}"
    )


def load_kuairand(
    path: PathLike | Sequence[PathLike], *, positive_column: str | None = None
) -> InteractionLog:
    """Load KuaiRand (27K / 1K / Pure) ``log_standard_*.csv`` files.

    Uses ``user_id``, ``video_id`` and ``time_ms`` (int64 milliseconds).

    Args:
        path: a directory (all ``log_standard_*.csv`` inside it, or inside its
            ``data/`` subfolder), one file, or a list of files. Files are
            concatenated in sorted file-name order, which is chronological for
            the official names.
        positive_column: optional 0/1 column (e.g. ``"is_click"``); when given
            only rows where it is non-zero are kept.
    """
    files = _kuairand_files(path)
    parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "time": []}
    wanted = ["user_id", "video_id", "time_ms"]
    if positive_column is not None:
        if not isinstance(positive_column, str):
            raise TypeError(f"positive_column must be a str or None, got {type(positive_column).__name__}")
        wanted.append(positive_column)
    for f in files:
        header = _read_header(f, ",", "utf-8-sig", quoted=True)
        idx = _find_columns(f, header, wanted)
        cols = [
            _Column("user", idx[0], "int"),
            _Column("item", idx[1], "int"),
            _Column("time", idx[2], "decimal"),
        ]
        if positive_column is not None:
            cols.append(_Column("positive", idx[3], "int"))
        arrays, _ = _read_columns(f, cols, delimiter=",", skip_header=True, quoted=True)
        keep = arrays["positive"] != 0 if positive_column is not None else slice(None)
        for key in parts:
            parts[key].append(arrays[key][keep])
    merged = {k: np.concatenate(v) for k, v in parts.items()}
    desc = str(files[0]) if len(files) == 1 else f"{len(files)} KuaiRand files in {files[0].parent}"
    return _build_log(desc, merged, timestamp_unit="ms", name="kuairand")


def load_recbole(
    path: PathLike,
    *,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    time_unit: str = "s",
) -> InteractionLog:
    """Load a RecBole atomic ``.inter`` file.

    The header cells look like ``user_id:token``; columns are matched on the
    part before the colon. Ids are tokens (kept as strings unless they are
    all canonical integers); timestamps may be floats such as
    ``978300760.0`` and are floored to int64 in ``time_unit``.
    """
    p = _as_path("path", path)
    _check_file(p)
    unit = _check_unit("time_unit", time_unit)
    for arg, value in (("user_field", user_field), ("item_field", item_field), ("time_field", time_field)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{arg} must be a non-empty str, got {value!r}")
    header = [cell.split(":", 1)[0].strip() for cell in _read_header(p, "\t", "utf-8-sig", quoted=False)]
    u, i, t = _find_columns(p, header, [user_field, item_field, time_field])
    cols = [_Column("user", u, "token"), _Column("item", i, "token"), _Column("time", t, "decimal")]
    arrays, _ = _read_columns(p, cols, delimiter="\t", skip_header=True, quoted=False)
    return _build_log(str(p), arrays, timestamp_unit=unit, name=p.stem)


def load_csv(
    path: PathLike,
    user_col: str | int,
    item_col: str | int,
    time_col: str | int,
    sep: str = ",",
    time_unit: str = "s",
    *,
    has_header: bool = True,
    source_time_unit: str | None = None,
    encoding: str = "utf-8-sig",
    name: str | None = None,
) -> InteractionLog:
    """Load a generic delimited file.

    Args:
        path: the file.
        user_col, item_col, time_col: header names (requires ``has_header``)
            or 0-based column indices.
        sep: single-character separator (``"\\t"`` for TSV).
        time_unit: unit of the returned timestamps, ``"s"`` or ``"ms"``.
        has_header: whether the first non-blank line is a header.
        source_time_unit: unit of the values in the file (default
            ``time_unit``); ``"s"`` with ``time_unit="ms"`` multiplies by 1000
            exactly. Converting ms to s is not supported (lossy).
        encoding: text encoding of the file.
        name: name stored in the log (default: file stem).
    """
    p = _as_path("path", path)
    _check_file(p)
    unit = _check_unit("time_unit", time_unit)
    src_unit = unit if source_time_unit is None else _check_unit("source_time_unit", source_time_unit)
    if (src_unit, unit) == ("ms", "s"):
        raise ValueError("source_time_unit='ms' with time_unit='s' would lose precision; use time_unit='ms'")
    if not isinstance(sep, str) or len(sep) != 1 or sep in "\r\n\"":
        raise ValueError(f"sep must be a single character other than newline or quote, got {sep!r}")
    specs = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
    header = _read_header(p, sep, encoding, quoted=True) if has_header else None
    indices: list[int] = []
    for arg, spec in specs.items():
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise TypeError(f"{arg} must be a column name (str) or index (int), got {spec!r}")
        if isinstance(spec, str):
            if header is None:
                raise ValueError(f"{arg}={spec!r} is a column name but has_header=False")
            indices.append(_find_columns(p, header, [spec])[0])
        else:
            if spec < 0:
                raise ValueError(f"{arg} must be a non-negative column index, got {spec}")
            indices.append(spec)
    if len(set(indices)) != 3:
        raise ValueError(f"user_col, item_col and time_col must be distinct columns, got {specs}")
    cols = [
        _Column("user", indices[0], "token"),
        _Column("item", indices[1], "token"),
        _Column("time", indices[2], "decimal", scale_digits=3 if (src_unit, unit) == ("s", "ms") else 0),
    ]
    arrays, _ = _read_columns(
        p, cols, delimiter=sep, encoding=encoding, skip_header=has_header, quoted=True
    )
    return _build_log(str(p), arrays, timestamp_unit=unit, name=name if name is not None else p.stem)


# --------------------------------------------------------------------------
# Dispatcher + cache
# --------------------------------------------------------------------------

# Loader *names* (looked up at call time so tests can monkeypatch them) and
# the standard file each expects when given a directory.
_FILE_LOADERS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "ml-100k": ("load_movielens_100k", "u.data", ("ml-100k",)),
    "ml-1m": ("load_movielens_1m", "ratings.dat", ("ml-1m",)),
    "ml-20m": ("load_movielens_20m", "ratings.csv", ("ml-20m",)),
    "kuairec": ("load_kuairec", "big_matrix.csv", ("data", "KuaiRec 2.0/data", "KuaiRec/data")),
    "kuairand": ("load_kuairand", None, ()),
    "recbole": ("load_recbole", None, ()),
    "csv": ("load_csv", None, ()),
}


def _resolve_input(name: str, data_path: Any) -> Path | list[Path]:
    """Turn ``data_path`` into the concrete file(s) the loader will read."""
    _, standard, subdirs = _FILE_LOADERS[name]
    if name == "kuairand":
        return _kuairand_files(data_path)
    p = _as_path("data_path", data_path)
    if not p.exists():
        raise FileNotFoundError(f"data_path not found: {p}")
    if p.is_file():
        return p
    if standard is not None:
        for sub in ("", *subdirs):
            candidate = p / sub / standard if sub else p / standard
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"{name}: directory {p} does not contain {standard} (also looked in {list(subdirs)})"
        )
    if name == "recbole":
        inter = sorted(p.glob("*.inter"))
        if len(inter) != 1:
            raise ValueError(
                f"recbole: directory {p} must contain exactly one .inter file, found {[f.name for f in inter]}"
            )
        return inter[0]
    raise ValueError(f"{name}: data_path must be a file, got directory {p}")


def _cache_key(name: str, files: list[Path], params: dict[str, Any]) -> str:
    stamp = []
    for f in files:
        st = f.stat()
        stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    payload = json.dumps(
        {"version": _CACHE_VERSION, "loader": name, "files": stamp, "params": params},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def load_dataset(
    name: str,
    data_path: PathLike | Sequence[PathLike] | None = None,
    *,
    cache_dir: PathLike | None = None,
    k_core: tuple[int, int] | None = None,
    min_user_events: int | None = None,
    **kwargs: Any,
) -> InteractionLog:
    """Load (and optionally preprocess and cache) a dataset by name.

    Args:
        name: one of :data:`DATASET_NAMES` (case-insensitive, ``_`` == ``-``).
        data_path: the data file or the directory containing the standard
            file (``u.data``, ``ratings.dat``, ``ratings.csv``,
            ``big_matrix.csv``, ``log_standard_*.csv``, a single ``*.inter``).
            Must be omitted for ``"synthetic"``.
        cache_dir: when given, the preprocessed log is stored there as
            ``<name>-<hash>.npz``; the hash covers the loader name, absolute
            path(s), file size(s), modification time(s) and all arguments, so
            a changed file or argument never hits a stale entry.
        k_core: optional ``(min_user, min_item)`` applied via
            :meth:`InteractionLog.k_core`.
        min_user_events: optional minimum events per user, applied after
            ``k_core`` via :meth:`InteractionLog.drop_short_users`.
        **kwargs: forwarded to the loader (``load_csv``'s column names,
            ``make_synthetic_log``'s sizes, ...).

    Returns:
        The :class:`InteractionLog`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key_name = name.strip().lower().replace("_", "-")
    if key_name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if k_core is not None and (
        not isinstance(k_core, (tuple, list)) or len(k_core) != 2
    ):
        raise ValueError(f"k_core must be a (min_user, min_item) pair or None, got {k_core!r}")

    loader: Callable[[], InteractionLog]
    files: list[Path]
    if key_name == "synthetic":
        if data_path is not None:
            raise ValueError("data_path must be None for the 'synthetic' dataset")
        from . import synthetic

        files = []

        def loader() -> InteractionLog:
            return synthetic.make_synthetic_log(**kwargs)

    else:
        if data_path is None:
            raise ValueError(f"data_path is required for dataset {key_name!r}")
        resolved = _resolve_input(key_name, data_path)
        files = resolved if isinstance(resolved, list) else [resolved]
        func_name = _FILE_LOADERS[key_name][0]

        def loader() -> InteractionLog:
            func = globals()[func_name]
            return func(resolved, **kwargs)

    cache_file: Path | None = None
    if cache_dir is not None:
        params = {"kwargs": kwargs, "k_core": list(k_core) if k_core else None, "min_user_events": min_user_events}
        cache_file = Path(cache_dir) / f"{key_name}-{_cache_key(key_name, files, params)}.npz"
        if cache_file.is_file():
            try:
                return InteractionLog.load(cache_file)
            except (ValueError, OSError) as exc:
                # A corrupt or outdated entry is rebuilt rather than fatal.
                warnings.warn(f"ignoring unreadable cache file {cache_file}: {exc}", stacklevel=2)

    log = loader()
    if k_core is not None:
        log = log.k_core(int(k_core[0]), int(k_core[1]))
    if min_user_events is not None:
        log, _ = log.drop_short_users(int(min_user_events))
    if cache_file is not None:
        log.save(cache_file)
    return log
