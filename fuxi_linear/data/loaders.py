"""Readers of the public recommendation datasets used by FuXi-Linear, one function per file format.

Every ``load_*`` function parses one file format into an :class:`~fuxi_linear.data.interactions.InteractionLog`
(users remapped to ``0..U-1``, items to ``1..N``, events stably sorted by user, timestamp and file row). The
parsing itself (chunked numpy fast path, line-exact errors, exact decimal timestamps) is
:mod:`fuxi_linear.data.delimited`; :mod:`fuxi_linear.data.catalogue` maps dataset names to these loaders.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from .delimited import Column, check_file, find_columns, read_columns, read_header
from .interactions import VALID_TIMESTAMP_UNITS, InteractionLog

__all__ = [
    "load_csv",
    "load_kuairand",
    "load_kuairec",
    "load_movielens_100k",
    "load_movielens_1m",
    "load_movielens_20m",
    "load_recbole",
]

PathLike = Union[str, "os.PathLike[str]"]


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


def as_path(arg: str, value: object) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a str or os.PathLike, got {type(value).__name__}")
    return Path(value)


def _check_unit(arg: str, unit: object) -> str:
    if unit not in VALID_TIMESTAMP_UNITS:
        raise ValueError(f"{arg} must be one of {VALID_TIMESTAMP_UNITS}, got {unit!r}")
    return str(unit)




def load_movielens_100k(path: PathLike) -> InteractionLog:
    """Load MovieLens-100K ``u.data`` (``user<TAB>item<TAB>rating<TAB>unix seconds``).

    Every rating counts as one implicit interaction. Timestamps in seconds.
    """
    p = as_path("path", path)
    check_file(p)
    cols = [Column("user", 0, "int"), Column("item", 1, "int"), Column("time", 3, "decimal")]
    arrays, _ = read_columns(p, cols, delimiter="\t", skip_header=False, num_fields=4)
    return _build_log(str(p), arrays, timestamp_unit="s", name="ml-100k")


def load_movielens_1m(path: PathLike) -> InteractionLog:
    """Load MovieLens-1M ``ratings.dat`` (``user::item::rating::seconds``, latin-1)."""
    p = as_path("path", path)
    check_file(p)
    cols = [Column("user", 0, "int"), Column("item", 1, "int"), Column("time", 3, "decimal")]
    # "::" is rewritten to a tab so numpy's single-character splitter can be used;
    # the file never contains tabs.
    arrays, _ = read_columns(
        p, cols, delimiter="\t", encoding="latin-1", skip_header=False, replace=("::", "\t"), num_fields=4
    )
    return _build_log(str(p), arrays, timestamp_unit="s", name="ml-1m")


def load_movielens_20m(path: PathLike) -> InteractionLog:
    """Load MovieLens-20M ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)."""
    p = as_path("path", path)
    check_file(p)
    header = read_header(p, ",", "utf-8-sig", quoted=True)
    u, i, t = find_columns(p, header, ["userId", "movieId", "timestamp"])
    cols = [Column("user", u, "int"), Column("item", i, "int"), Column("time", t, "decimal")]
    arrays, _ = read_columns(p, cols, delimiter=",", skip_header=True, quoted=True, num_fields=len(header))
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
    p = as_path("path", path)
    check_file(p)
    header = read_header(p, ",", "utf-8-sig", quoted=True)
    u, i, t = find_columns(p, header, ["user_id", "video_id", "timestamp"])
    cols = [
        Column("user", u, "int"),
        Column("item", i, "int"),
        Column("time", t, "decimal", scale_digits=3, allow_missing=drop_missing_timestamps),
    ]
    arrays, dropped = read_columns(p, cols, delimiter=",", skip_header=True, quoted=True, num_fields=len(header))
    if dropped:
        warnings.warn(f"{p}: dropped {dropped} rows with a missing timestamp", stacklevel=2)
    return _build_log(str(p), arrays, timestamp_unit="ms", name="kuairec")


def kuairand_files(path: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("log_standard_*.csv"), key=lambda f: f.name)
            if not files and (p / "data").is_dir():
                files = sorted((p / "data").glob("log_standard_*.csv"), key=lambda f: f.name)
            if not files:
                raise FileNotFoundError(f"no log_standard_*.csv files found in directory {p}")
            return files
        check_file(p)
        return [p]
    if isinstance(path, Sequence) and not isinstance(path, (bytes, bytearray)):
        files = [as_path("path[]", f) for f in path]
        if not files:
            raise ValueError("path must name at least one KuaiRand log file")
        for f in files:
            check_file(f)
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
    files = kuairand_files(path)
    parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "time": []}
    wanted = ["user_id", "video_id", "time_ms"]
    if positive_column is not None:
        if not isinstance(positive_column, str):
            raise TypeError(f"positive_column must be a str or None, got {type(positive_column).__name__}")
        wanted.append(positive_column)
    for f in files:
        header = read_header(f, ",", "utf-8-sig", quoted=True)
        idx = find_columns(f, header, wanted)
        cols = [
            Column("user", idx[0], "int"),
            Column("item", idx[1], "int"),
            Column("time", idx[2], "decimal"),
        ]
        if positive_column is not None:
            cols.append(Column("positive", idx[3], "int"))
        arrays, _ = read_columns(f, cols, delimiter=",", skip_header=True, quoted=True, num_fields=len(header))
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
    p = as_path("path", path)
    check_file(p)
    unit = _check_unit("time_unit", time_unit)
    for arg, value in (("user_field", user_field), ("item_field", item_field), ("time_field", time_field)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{arg} must be a non-empty str, got {value!r}")
    header = [cell.split(":", 1)[0].strip() for cell in read_header(p, "\t", "utf-8-sig", quoted=False)]
    u, i, t = find_columns(p, header, [user_field, item_field, time_field])
    cols = [Column("user", u, "token"), Column("item", i, "token"), Column("time", t, "decimal")]
    arrays, _ = read_columns(p, cols, delimiter="\t", skip_header=True, quoted=False, num_fields=len(header))
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
    p = as_path("path", path)
    check_file(p)
    unit = _check_unit("time_unit", time_unit)
    src_unit = unit if source_time_unit is None else _check_unit("source_time_unit", source_time_unit)
    if (src_unit, unit) == ("ms", "s"):
        raise ValueError("source_time_unit='ms' with time_unit='s' would lose precision; use time_unit='ms'")
    if not isinstance(sep, str) or len(sep) != 1 or sep in "\r\n\"":
        raise ValueError(f"sep must be a single character other than newline or quote, got {sep!r}")
    specs = {"user_col": user_col, "item_col": item_col, "time_col": time_col}
    header = read_header(p, sep, encoding, quoted=True) if has_header else None
    indices: list[int] = []
    for arg, spec in specs.items():
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise TypeError(f"{arg} must be a column name (str) or index (int), got {spec!r}")
        if isinstance(spec, str):
            if header is None:
                raise ValueError(f"{arg}={spec!r} is a column name but has_header=False")
            indices.append(find_columns(p, header, [spec])[0])
        else:
            if spec < 0:
                raise ValueError(f"{arg} must be a non-negative column index, got {spec}")
            indices.append(spec)
    if len(set(indices)) != 3:
        raise ValueError(f"user_col, item_col and time_col must be distinct columns, got {specs}")
    cols = [
        Column("user", indices[0], "token"),
        Column("item", indices[1], "token"),
        Column("time", indices[2], "decimal", scale_digits=3 if (src_unit, unit) == ("s", "ms") else 0),
    ]
    arrays, _ = read_columns(
        p, cols, delimiter=sep, encoding=encoding, skip_header=has_header, quoted=True,
        num_fields=len(header) if header is not None else None,
    )
    return _build_log(str(p), arrays, timestamp_unit=unit, name=name if name is not None else p.stem)
