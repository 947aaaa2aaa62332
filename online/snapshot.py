"""Snapshots of the scorer's online state (#16, warm restart): written atomically, versioned, checksummed.

A snapshot file holds one Python object (the scorer's online state, see ``streams.agents.serving``) with
the log offsets it reflects, so that a restarted scorer replays the log from there instead of starting
empty. File layout::

    b"TAILCAST-SNAPSHOT\\n"         magic line
    <header: one line of JSON>\\n   format_version, created_at, offsets, meta, extra, payload_bytes, sha256
    <payload: pickle bytes>

``sha256`` digests the header without that field (canonical JSON), then the payload: a truncated, altered
or half-written file is refused (:class:`SnapshotError`) before anything is unpickled. Unpickling runs code
named in the file, so a snapshot folder must be as trusted as the code. ``offsets``: topic -> partition ->
the first offset *not* reflected; ``meta``: free JSON (the configuration, to refuse an incompatible one).
Writes are atomic (:func:`write_atomic`). :class:`SnapshotStore` keeps ``s{n:06d}-{UTC time}-{token}.snap``
files (the token keeps two writers apart), the newest ``keep``. :func:`encode` (a consistent copy, taken
where nothing mutates the state) and :func:`write_snapshot` (safe in a thread) are separate so that only
the first holds the caller's event loop.

>>> import tempfile
>>> store = SnapshotStore(tempfile.mkdtemp(), keep=2)
>>> for n in range(3):
...     _ = store.write(encode({"n": n}), offsets={"t": {0: 10 * n}}, meta={"k": 10})
>>> [p.name[:7] for p in store.paths()]
['s000002', 's000003']
>>> snap = read_snapshot(store.paths()[-1])
>>> snap.state, snap.offsets, snap.meta
({'n': 2}, {'t': {0: 20}}, {'k': 10})
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

__all__ = ["Snapshot", "SnapshotError", "SnapshotStore", "VersionedFolder", "encode", "write_snapshot",
           "read_snapshot", "write_atomic", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

MAGIC = b"TAILCAST-SNAPSHOT\n"
FORMAT_VERSION = 1
#: A header longer than this is not a snapshot's (it holds offsets and a little metadata).
MAX_HEADER_BYTES = 1 << 20

Offsets = Mapping[str, Mapping[int, int]]


class SnapshotError(RuntimeError):
    """A snapshot file is missing, corrupt, truncated, of another format, or does not fit the caller."""


@dataclass
class Snapshot:
    """A loaded snapshot: the state object, the offsets it reflects, its metadata."""

    state: Any
    offsets: dict[str, dict[int, int]]
    meta: dict[str, Any]
    created_at: float
    path: Path | None = None
    payload_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created_at)


def encode(state: Any) -> bytes:
    """The payload of a snapshot of ``state``: a pickle, i.e. a copy that later changes to ``state`` do not
    reach (take it where nothing mutates ``state``: between two micro-batches)."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _header(offsets: Offsets, meta: Mapping[str, Any], extra: Mapping[str, Any], payload: bytes,
            created_at: float) -> bytes:
    head = {"format_version": FORMAT_VERSION, "created_at": created_at, "payload_bytes": len(payload),
            "offsets": {t: {str(p): int(o) for p, o in sorted(parts.items())} for t, parts in offsets.items()},
            "meta": dict(meta), "extra": dict(extra)}
    head["sha256"] = _digest(head, payload)
    return orjson.dumps(head, option=orjson.OPT_SORT_KEYS)


def _digest(head: Mapping[str, Any], payload: bytes) -> str:
    h = hashlib.sha256(orjson.dumps({k: v for k, v in head.items() if k != "sha256"}, option=orjson.OPT_SORT_KEYS))
    h.update(payload)
    return h.hexdigest()


def write_snapshot(path: str | os.PathLike, payload: bytes, *, offsets: Offsets,
                   meta: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                   created_at: float | None = None) -> Path:
    """Write ``payload`` (from :func:`encode`) with its header to ``path`` atomically; returns ``path``.
    ``meta`` and ``extra`` are JSON objects kept in the header (``meta``: what the state must agree with,
    ``extra``: anything else the reader checks)."""
    path = Path(path)
    header = _header(offsets, meta or {}, extra or {}, payload, time.time() if created_at is None else created_at)
    write_atomic(path, lambda f: f.writelines((MAGIC, header, b"\n", payload)))
    return path


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed and fsynced, then ``os.replace`` and the
    folder fsynced: a reader sees the old file or the new one, never half of one (snapshots, checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # the rename itself survives a power cut once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not every file system lets a folder be opened or synced
        pass


def read_snapshot(path: str | os.PathLike) -> Snapshot:
    """Read and verify a snapshot file; :class:`SnapshotError` says what is wrong with it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise SnapshotError(f"{path} is not a tailcast snapshot (no {MAGIC[:-1].decode()} line)")
            line = f.readline(MAX_HEADER_BYTES + 1)
            payload = f.read()
    except FileNotFoundError as e:
        raise SnapshotError(f"no snapshot file at {path}") from e
    except OSError as e:
        raise SnapshotError(f"snapshot {path} could not be read: {e}") from e
    if not line.endswith(b"\n"):
        raise SnapshotError(f"snapshot {path} is truncated or corrupt: its header line does not end")
    try:
        head = orjson.loads(line)
        version = head["format_version"]
        digest = head["sha256"]
        size = head["payload_bytes"]
        offsets = {str(t): {int(p): int(o) for p, o in parts.items()} for t, parts in head["offsets"].items()}
        meta = dict(head["meta"])
        extra = dict(head.get("extra") or {})
        created_at = float(head["created_at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotError(f"snapshot {path} has a corrupt header ({type(e).__name__}: {e})") from e
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SnapshotError(f"snapshot {path} has format_version {version!r}; this code reads <= {FORMAT_VERSION}")
    if len(payload) != size:
        raise SnapshotError(f"snapshot {path} is truncated or corrupt: {len(payload)} payload bytes, "
                            f"the header says {size}")
    if _digest(head, payload) != digest:
        raise SnapshotError(f"snapshot {path} is corrupt: its sha256 does not match its header")
    try:
        state = pickle.loads(payload)
    except Exception as e:  # noqa: BLE001 - a verified payload that no longer unpickles: other code
        raise SnapshotError(f"snapshot {path} does not load with this code ({type(e).__name__}: "
                            f"{str(e)[:200]})") from e
    return Snapshot(state=state, offsets=offsets, meta=meta, created_at=created_at, path=path, payload_bytes=size,
                    extra=extra)


class VersionedFolder:
    """Numbered files in one folder (the number: ``NAME``'s first group; newest = highest), of which the
    newest ``keep`` are kept: the snapshot store here, ``models.checkpoint.CheckpointRegistry``."""

    NAME: re.Pattern[str]

    def __init__(self, directory: str | os.PathLike, *, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """The files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := self.NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def _next_number(self) -> int:
        paths = self.paths()
        return int(self.NAME.match(paths[-1].name).group(1)) + 1 if paths else 1

    def _prune(self) -> None:
        """Delete all but the newest ``keep`` files."""
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)


class SnapshotStore(VersionedFolder):
    """Versioned snapshots in one folder: :meth:`write` the next one, read the :meth:`latest` valid one."""

    NAME = re.compile(r"^s(\d+)-[0-9TZ]+-[0-9a-f]+\.snap$")

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2) -> None:
        super().__init__(directory, keep=keep)

    def next_path(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return self.directory / f"s{self._next_number():06d}-{stamp}-{uuid.uuid4().hex[:6]}.snap"

    def write(self, payload: bytes, *, offsets: Offsets, meta: Mapping[str, Any] | None = None,
              extra: Mapping[str, Any] | None = None, created_at: float | None = None) -> Path:
        """Write an encoded payload as the next snapshot, then delete all but the newest ``keep``."""
        path = write_snapshot(self.next_path(), payload, offsets=offsets, meta=meta, extra=extra,
                              created_at=created_at)
        self._prune()
        return path

    def latest(self, *, accept: Callable[[Snapshot], None] | None = None,
               on_error: Callable[[Path, SnapshotError], None] | None = None) -> Snapshot | None:
        """The newest snapshot that reads, verifies and that ``accept`` does not refuse (by raising
        :class:`SnapshotError`); each refused one is passed to ``on_error`` (default: a warning) and the
        next older one is tried. None: no valid snapshot (a cold start)."""
        for path in reversed(self.paths()):
            try:
                snap = read_snapshot(path)
                if accept is not None:
                    accept(snap)
                return snap
            except SnapshotError as e:
                if on_error is not None:
                    on_error(path, e)
                else:
                    log.warning("skipping snapshot %s: %s", path.name, e)
        return None
