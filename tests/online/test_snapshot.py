"""The snapshot file format (#16, ``online.snapshot``): a round trip, and refusals of every broken file."""

from __future__ import annotations

import os

import pytest

from online.snapshot import MAGIC, SnapshotError, SnapshotStore, encode, read_snapshot, write_snapshot

STATE = {"users": {"u1": 3, "u2": 5}, "rows": list(range(1000))}
OFFSETS = {"score-requests": {0: 120, 3: 7}}


def _write(tmp_path, **kw):
    return write_snapshot(tmp_path / "s.snap", encode(STATE), offsets=OFFSETS, meta={"k": 10},
                          extra={"fingerprints": {"0": "ab"}}, **kw)


def test_round_trip_gives_the_state_offsets_meta_and_extra(tmp_path) -> None:
    snap = read_snapshot(_write(tmp_path, created_at=123.0))
    assert snap.state == STATE and snap.offsets == OFFSETS and snap.meta == {"k": 10}
    assert snap.extra == {"fingerprints": {"0": "ab"}} and snap.created_at == 123.0
    assert snap.payload_bytes == len(encode(STATE))


@pytest.mark.parametrize("cut", [5, len(MAGIC) + 10, -1, -100])
def test_a_truncated_file_is_refused(tmp_path, cut) -> None:
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(SnapshotError, match="truncated|corrupt|not a tailcast snapshot"):
        read_snapshot(path)


def test_a_flipped_payload_byte_is_refused_before_unpickling(tmp_path) -> None:
    path = _write(tmp_path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="sha256 does not match"):
        read_snapshot(path)


def test_an_altered_offset_in_the_header_is_refused(tmp_path) -> None:
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"0":120', b'"0":121', 1))
    with pytest.raises(SnapshotError, match="sha256 does not match"):
        read_snapshot(path)


def test_other_files_and_newer_formats_are_refused(tmp_path) -> None:
    other = tmp_path / "x.snap"
    other.write_bytes(b"\x80\x05hello")
    with pytest.raises(SnapshotError, match="not a tailcast snapshot"):
        read_snapshot(other)
    with pytest.raises(SnapshotError, match="no snapshot file"):
        read_snapshot(tmp_path / "missing.snap")
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"format_version":1', b'"format_version":9', 1))
    with pytest.raises(SnapshotError, match="format_version 9"):
        read_snapshot(path)


def test_a_failed_write_leaves_no_partial_file_and_the_old_snapshot_intact(tmp_path, monkeypatch) -> None:
    path = _write(tmp_path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(path, encode({"other": 1}), offsets=OFFSETS)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.snap"]  # no temporary file left behind


def test_the_store_keeps_the_newest_and_falls_back_past_a_corrupt_one(tmp_path) -> None:
    store = SnapshotStore(tmp_path / "snaps", keep=2)
    assert store.latest() is None
    for n in range(3):
        store.write(encode({"n": n}), offsets={"t": {0: n}})
    paths = store.paths()
    assert len(paths) == 2 and store.latest().state == {"n": 2}
    paths[-1].write_bytes(paths[-1].read_bytes()[:-3])  # the newest one cut short
    refused = []
    snap = store.latest(on_error=lambda path, exc: refused.append((path, str(exc))))
    assert snap.state == {"n": 1} and snap.offsets == {"t": {0: 1}}
    assert [p for p, _ in refused] == [paths[-1]] and "truncated" in refused[0][1]

    def only_even(s):
        if s.state["n"] % 2:
            raise SnapshotError("odd")

    paths[-1].unlink()
    assert store.latest(accept=only_even, on_error=lambda *a: None) is None  # refused by the caller: none left
