"""Small helpers every part of the package shares: argument checks, devices, progress bars, atomic writes.

Nothing here knows about models or data; it imports only torch (tqdm on first use of a progress bar).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch

#: Integer dtypes accepted for ids, lengths, offsets and indices (int64 is the default everywhere).
INT_DTYPES = (torch.int32, torch.int64)


def is_int(value: object) -> bool:
    """A Python int that is not a bool (``True`` is an int to Python, never a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    """``value`` if it is an int ``>= minimum`` (or None when ``allow_none``), else an error naming ``name``.

    Raises ``TypeError`` for anything but an int (a bool or a float included) and ``ValueError`` for an int
    below ``minimum``; the message reads "NAME must be a positive int[ or None], got VALUE" (``minimum=1``) or
    "NAME must be an int >= MINIMUM[ or None], got VALUE".
    """
    if value is None and allow_none:
        return None
    what = ("a positive int" if minimum == 1 else f"an int >= {minimum}") + (" or None" if allow_none else "")
    if not is_int(value):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_positive_ints(obj: object, names: Iterable[str], allow_none: bool = False) -> None:
    """:func:`check_int` on each attribute ``names`` of ``obj`` (a config dataclass)."""
    for name in names:
        check_int(name, getattr(obj, name), allow_none=allow_none)


def resolve_device(name: Union[str, torch.device], flag: str = "--device") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device.

    Raises ``ValueError`` naming ``flag`` for any other name, or for CUDA on a machine without it.
    """
    expected = f"{flag} must be auto, cpu, cuda or cuda:N, got {name!r}"
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(expected)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(expected) from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(expected)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name} was requested but CUDA is not available here (use {flag} cpu)")
    return device


def progress(iterable: Optional[Iterable] = None, enabled: bool = True, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or a manual one, ``total=...``, when None) if ``enabled``; otherwise the
    iterable itself (None for a manual bar), so callers iterate the same way and test ``bar is not None``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def fsync_path(path: Union[str, os.PathLike]) -> None:
    """Flush a file's (or a folder's) contents and metadata to the disk (``os.fsync``); a no-op for folders on
    platforms that cannot open them (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None],
                 before_replace: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``path`` by ``write(tmp)`` on a temporary file next to it, then rename that into place, durably.

    ``os.replace`` is atomic on POSIX and Windows, so a reader (or a resumed run) sees the old file or the new
    one, never a half-written one. The temporary file is fsynced before the rename and the folder after it, so
    that after a power cut the folder holds the old file or the complete new one (a rename can otherwise reach
    the disk before the data it names). The temporary name is per process (``.NAME.PID.tmp``: several
    processes may write the same cache file) and is removed when ``write`` fails. The parent folder must exist.
    ``before_replace(tmp)`` runs between the sync and the rename (the crash tests' hook).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_path(tmp)
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Union[str, os.PathLike], obj: Any, **dumps_kwargs: Any) -> Path:
    """:func:`atomic_write` of ``json.dumps(obj, **dumps_kwargs)`` and a final newline."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


__all__ = ["INT_DTYPES", "is_int", "check_int", "check_positive_ints", "resolve_device", "progress",
           "fsync_path", "atomic_write", "atomic_write_text", "atomic_write_json"]
