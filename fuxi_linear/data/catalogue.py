"""The dataset catalogue: names, their loaders and standard files, and :func:`load_dataset` with its cache.

:data:`DATASETS` is a plain dict from a dataset name to its :class:`DatasetEntry` (loader function, the
standard file name inside a dataset folder, and the sub-folders where that file is also looked for).
:func:`load_dataset` dispatches by name, resolves a folder to the dataset's standard file and optionally
caches the preprocessed log as ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from . import loaders
from .interactions import InteractionLog

__all__ = ["DATASETS", "DATASET_NAMES", "DATASET_TIMESTAMP_UNITS", "DatasetEntry", "load_dataset"]

PathLike = Union[str, "os.PathLike[str]"]

# Bumped when the parsing or preprocessing semantics change, so stale cache
# entries are never reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class DatasetEntry:
    """One file-based dataset: its loader, the standard file inside a dataset folder (None: the loader takes
    any file, or resolves folders itself) and the sub-folders also searched for that file, and the unit of the
    timestamps it produces (None: depends on the loader's arguments)."""

    loader: Callable[..., InteractionLog]
    standard_file: Optional[str]
    subdirs: tuple[str, ...]
    timestamp_unit: Optional[str]


DATASETS: dict[str, DatasetEntry] = {
    "ml-100k": DatasetEntry(loaders.load_movielens_100k, "u.data", ("ml-100k",), "s"),
    "ml-1m": DatasetEntry(loaders.load_movielens_1m, "ratings.dat", ("ml-1m",), "s"),
    "ml-20m": DatasetEntry(loaders.load_movielens_20m, "ratings.csv", ("ml-20m",), "s"),
    "kuairec": DatasetEntry(loaders.load_kuairec, "big_matrix.csv", ("data", "KuaiRec 2.0/data", "KuaiRec/data"),
                            "ms"),
    "kuairand": DatasetEntry(loaders.load_kuairand, None, (), "ms"),
    "recbole": DatasetEntry(loaders.load_recbole, None, (), None),
    "csv": DatasetEntry(loaders.load_csv, None, (), None),
}

#: Every name :func:`load_dataset` accepts: the file-based datasets, then the built-in synthetic log.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS) + ("synthetic",)

#: Unit of the timestamps each dataset produces (``None``: depends on the loader arguments).
DATASET_TIMESTAMP_UNITS: dict[str, Optional[str]] = {
    **{name: entry.timestamp_unit for name, entry in DATASETS.items()}, "synthetic": "s"}


def _resolve_input(name: str, data_path: Any) -> Path | list[Path]:
    """Turn ``data_path`` into the concrete file(s) the loader will read."""
    entry = DATASETS[name]
    standard, subdirs = entry.standard_file, entry.subdirs
    if name == "kuairand":
        return loaders.kuairand_files(data_path)
    p = loaders.as_path("data_path", data_path)
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
        load = DATASETS[key_name].loader

        def loader() -> InteractionLog:
            return load(resolved, **kwargs)

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
