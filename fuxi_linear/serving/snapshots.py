"""On-disk snapshots of a serving loop (:meth:`fuxi_linear.serving.Decoder.save` / ``Decoder.load``), written so
that a crash at any moment leaves the previous snapshot loadable.

Layout of a snapshot folder ``DIR``::

    DIR/CURRENT                     the name of the current snapshot ("snapshot-000007"), replaced atomically
    DIR/snapshot-000007/state.pt    the admitted users' decode states (a DecodeState file, with the fingerprint)
    DIR/snapshot-000007/manifest.pt format, version, fingerprint, users, rows, positions, free rows, sizes

A save writes a new snapshot into a temporary folder (each file synced), renames the folder to its final
name, syncs ``DIR``, then replaces ``CURRENT`` (:func:`fuxi_linear.utils.atomic_write`, synced) and only then
deletes older snapshots. ``CURRENT`` always names a complete snapshot: before the switch the previous one,
after it the new one. A reader follows ``CURRENT`` only, so a half-written snapshot is never read; the next
save clears such leftovers.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from ..decoding.decode_state import STATE_FORMAT, STATE_VERSION, DecodeState
from ..fault_injection import crash_point
from ..utils import atomic_write_text, fsync_path

#: Format name and version of a snapshot manifest.
SNAPSHOT_FORMAT = "fuxi_linear.Decoder"
SNAPSHOT_VERSION = 1
CURRENT = "CURRENT"
_NAME = re.compile(r"snapshot-(\d{6,})")

PathLike = Union[str, os.PathLike]


def _snapshots(directory: Path) -> Dict[int, Path]:
    found = {}
    for p in directory.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return found


def _save_synced(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    fsync_path(path)


def write_snapshot(directory: PathLike, manifest: Dict[str, Any], state: DecodeState, keep: int = 1) -> Path:
    """Write a new snapshot (``state`` saved with ``manifest["fingerprint"]``) under ``directory`` (created if
    needed), make it current, and keep the ``keep`` newest snapshots; returns its folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = _snapshots(directory)
    number = max(existing, default=0) + 1
    final = directory / f"snapshot-{number:06d}"
    tmp = directory / f".snapshot-{number:06d}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "fingerprint": manifest["fingerprint"],
                   "tensors": {name: t.detach().cpu() for name, t, _ in state._user_tensors()}}
        _save_synced(payload, tmp / "state.pt")
        crash_point("decoder.state_written")
        manifest = dict(manifest, format=SNAPSHOT_FORMAT, version=SNAPSHOT_VERSION,
                        state_bytes=(tmp / "state.pt").stat().st_size)
        _save_synced(manifest, tmp / "manifest.pt")
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    crash_point("decoder.manifest_written")
    atomic_write_text(directory / CURRENT, final.name + "\n")
    # only now is the new snapshot the one a reader finds: older ones and leftovers of killed saves may go
    for n, p in _snapshots(directory).items():
        if n <= number - keep:
            shutil.rmtree(p, ignore_errors=True)
    for p in directory.glob(".snapshot-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    return final


def current_snapshot(directory: PathLike) -> Path:
    """The folder ``directory/CURRENT`` names; ``FileNotFoundError``/``ValueError`` naming what is wrong."""
    directory = Path(directory)
    pointer = directory / CURRENT
    if not pointer.is_file():
        raise FileNotFoundError(f"no decoder snapshot in {directory}: {pointer} does not exist "
                                f"(Decoder.save writes it)")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{pointer} is not a decoder snapshot pointer ({err})") from None
    if not _NAME.fullmatch(name):
        raise ValueError(f"{pointer} is not a decoder snapshot pointer: it holds {name[:80]!r}, expected "
                         f"'snapshot-NNNNNN'")
    folder = directory / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{pointer} names {name}, but {folder} does not exist")
    return folder


def _load(path: Path, what: str, map_location) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign: torch raises zip, pickle and runtime errors
        raise ValueError(f"{path} is not a {what}: it cannot be read ({type(err).__name__}: {err}); truncated, or "
                         f"another kind of file") from None


def read_snapshot(directory: PathLike, map_location: Union[str, torch.device] = "cpu"
                  ) -> Tuple[Dict[str, Any], DecodeState, Path]:
    """``(manifest, state of the saved users, folder)`` of ``directory``'s current snapshot, checked for
    format, version and consistency (clear errors naming the file)."""
    folder = current_snapshot(directory)
    manifest = _load(folder / "manifest.pt", "decoder snapshot manifest", "cpu")
    where = folder / "manifest.pt"
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{where} is not a decoder snapshot manifest")
    if manifest.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{where} has snapshot version {manifest.get('version')!r}; this fuxi-linear reads "
                         f"version {SNAPSHOT_VERSION}")
    needed = ("fingerprint", "max_users", "users", "rows", "positions", "free", "state_bytes")
    missing = [k for k in needed if k not in manifest]
    if missing:
        raise ValueError(f"{where} is missing {missing}")
    n = len(manifest["users"])
    if not (len(manifest["rows"]) == len(manifest["positions"]) == n):
        raise ValueError(f"{where} is inconsistent: {n} users, {len(manifest['rows'])} rows, "
                         f"{len(manifest['positions'])} positions")
    state_path = folder / "state.pt"
    if state_path.is_file() and state_path.stat().st_size != manifest["state_bytes"]:
        raise ValueError(f"{state_path} has {state_path.stat().st_size} bytes, its manifest says "
                         f"{manifest['state_bytes']}: truncated or replaced")
    state = DecodeState.load(state_path, map_location=map_location)
    if state.num_users != n:
        raise ValueError(f"{state_path} holds {state.num_users} users, its manifest {n}")
    if state.position.tolist() != list(manifest["positions"]):
        raise ValueError(f"{state_path}: the users' positions differ from the manifest's")
    return manifest, state, folder


__all__ = ["SNAPSHOT_FORMAT", "SNAPSHOT_VERSION", "write_snapshot", "read_snapshot", "current_snapshot"]
