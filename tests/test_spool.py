"""The spool on a real directory: durability, order, group commit, caps, torn tails, segments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.spool import Spool, SpoolError, SpoolFull, frame


async def _open(path: Path, **kw) -> Spool:  # type: ignore[no-untyped-def]
    return await Spool(path, max_bytes=kw.pop("max_bytes", 10 * 1024 * 1024), **kw).open()


async def _read_all(spool: Spool, start: int | None = None) -> list[bytes]:
    records, _ = await spool.read(spool.checkpoint if start is None else start, 1 << 30)
    return [r.payload for r in records]


async def test_appends_are_read_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = await _open(tmp_path, segment_bytes=64 * 1024)
    payloads = [f"record-{i}-".encode() * 100 for i in range(300)]  # ~300 KB → several 64 KB segments
    for p in payloads:
        await spool.append(p)
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert await _read_all(spool) == payloads
    # Reading in small bites continues exactly where the last bite ended.
    got: list[bytes] = []
    pos = spool.checkpoint
    while True:
        records, pos = await spool.read(pos, 5000)
        if not records:
            break
        got.extend(r.payload for r in records)
    assert got == payloads
    await spool.close()


async def test_concurrent_appends_are_group_committed(tmp_path: Path) -> None:
    spool = await _open(tmp_path)
    groups: list[int] = []
    spool.on_group_commit = groups.append
    await asyncio.gather(*(spool.append(f"{i}".encode()) for i in range(500)))
    assert sum(groups) == 500
    assert len(groups) < 500, "every append got its own fsync: no group commit"
    assert sorted(int(p) for p in await _read_all(spool)) == list(range(500))
    await spool.close()


async def test_commit_advances_checkpoint_drops_segments_and_survives_reopen(tmp_path: Path) -> None:
    spool = await _open(tmp_path, segment_bytes=4096)
    for i in range(100):
        await spool.append(b"x" * 200 + str(i).encode())
    records, _ = await spool.read(spool.checkpoint, 1 << 30)
    before = len(list(tmp_path.glob("*.seg")))
    await spool.commit(records[59].end)
    assert len(list(tmp_path.glob("*.seg"))) < before
    assert spool.pending_bytes == records[-1].end - records[59].end
    await spool.close()

    reopened = await _open(tmp_path, segment_bytes=4096)
    assert [p[200:] for p in await _read_all(reopened)] == [str(i).encode() for i in range(60, 100)]
    await reopened.commit(reopened.durable_position)
    assert reopened.pending_bytes == 0 and reopened.oldest_age_seconds() == 0
    await reopened.close()


async def test_torn_tail_is_truncated_on_open_and_later_appends_are_readable(tmp_path: Path) -> None:
    spool = await _open(tmp_path)
    for i in range(10):
        await spool.append(f"whole-{i}".encode())
    await spool.close()
    # A crash mid-write: half a record (never acknowledged) at the end of the last segment.
    [segment] = sorted(tmp_path.glob("*.seg"))
    with open(segment, "ab") as fh:
        fh.write(frame(b"torn-record-that-was-never-acked")[:15])
    reopened = await _open(tmp_path)
    await reopened.append(b"after-restart")
    payloads = await _read_all(reopened)
    assert payloads == [f"whole-{i}".encode() for i in range(10)] + [b"after-restart"]
    await reopened.close()


async def test_corrupt_record_is_skipped_not_stalled(tmp_path: Path) -> None:
    spool = await _open(tmp_path, segment_bytes=1024)
    for i in range(20):
        await spool.append(f"r{i:02d}".encode() * 20)
    await spool.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[30] ^= 0xFF  # flip a byte inside the first record's payload
    first.write_bytes(bytes(data))
    reopened = await _open(tmp_path, segment_bytes=1024)
    records, next_pos = await reopened.read(reopened.checkpoint, 1 << 30)
    assert next_pos == reopened.durable_position
    assert records and records[-1].payload == b"r19" * 20
    assert all(not r.payload.startswith(b"r00") for r in records)
    await reopened.close()


async def test_full_spool_refuses_with_spoolfull_and_recovers_after_commit(tmp_path: Path) -> None:
    spool = await _open(tmp_path, max_bytes=1024 * 1024)
    chunk = b"y" * 100_000
    accepted = 0
    with pytest.raises(SpoolFull):
        for _ in range(20):
            await spool.append(chunk)
            accepted += 1
    assert accepted == 10
    assert spool.above_high_water and spool.pending_bytes + len(chunk) > spool.max_bytes
    await spool.commit(spool.durable_position)
    await spool.append(chunk)
    await spool.close()


async def test_one_owner_per_directory(tmp_path: Path) -> None:
    spool = await _open(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        await _open(tmp_path)
    await spool.close()


async def test_disk_full_refuses_cleanly_and_recovers_when_space_returns(tiny_disk: Path) -> None:
    import subprocess

    spool = await _open(tiny_disk, max_bytes=100 * 1024 * 1024)
    chunk = b"z" * 50_000
    acked = 0
    with pytest.raises(SpoolError, match="write failed"):
        for _ in range(100):
            await spool.append(chunk + str(acked).encode())
            acked += 1
    assert 5 < acked < 25 and spool.write_error
    with pytest.raises(SpoolError):  # still full: still refused, nothing half-written
        await spool.append(chunk)
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)
    await spool.append(b"after-space-returned")
    assert spool.write_error is None
    payloads = await _read_all(spool)
    assert payloads == [chunk + str(i).encode() for i in range(acked)] + [b"after-space-returned"]
    await spool.close()
    reopened = await _open(tiny_disk, max_bytes=100 * 1024 * 1024)
    assert await _read_all(reopened) == payloads
    await reopened.close()
