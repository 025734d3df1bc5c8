"""Local storage: atomic streaming writes, and keys that cannot escape the root."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from bgworker import storage
from bgworker.storage import local

RID = "ab0c62f4-5a3e-4a43-9c55-6f3cb2a1d7e9"
LEASE = "0f4d8e1c2b3a49d7a6e5f4c3b2a1d0e9"


@pytest.fixture
def files(tmp_path: Path) -> storage.LocalStorage:
    s = storage.LocalStorage(tmp_path / "files")
    s.ensure()
    return s


def _visible(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(root).parts]


def _temps(root: Path) -> list[Path]:
    return list((root / ".tmp").iterdir())


def test_a_well_formed_key_is_accepted(files: storage.LocalStorage) -> None:
    assert files.path(f"ab/{RID}.{LEASE}") == files.root / "ab" / f"{RID}.{LEASE}"


def test_key_for_matches_the_pattern() -> None:
    rid, lease = uuid.uuid4(), uuid.uuid4()
    key = storage.key_for(rid, lease)
    assert key == f"{str(rid)[:2]}/{rid}.{lease.hex}"
    assert storage.key_for(rid, uuid.uuid4()) != key  # one file per attempt


async def test_finish_makes_the_complete_file_appear(files: storage.LocalStorage) -> None:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    chunks = [os.urandom(700_000), b"", os.urandom(900_000), b"tail"]
    writer = files.writer(key)
    for chunk in chunks:
        await writer.write(chunk)
        # Nothing is visible under the final name until finish().
        assert not files.path(key).exists()
    assert len(_temps(files.root)) == 1
    size, digest = await writer.finish()

    data = b"".join(chunks)
    assert size == len(data) == files.path(key).stat().st_size
    assert digest == hashlib.sha256(data).hexdigest()
    assert files.path(key).read_bytes() == data
    assert _temps(files.root) == []
    assert _visible(files.root) == [files.path(key)]


async def test_empty_file(files: storage.LocalStorage) -> None:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    writer = files.writer(key)
    size, digest = await writer.finish()
    assert (size, digest) == (0, hashlib.sha256(b"").hexdigest())
    assert files.path(key).read_bytes() == b""


async def test_abort_leaves_no_file(files: storage.LocalStorage) -> None:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    writer = files.writer(key)
    await writer.write(os.urandom(storage.BUFFER_SIZE + 10))  # some bytes reached the disk
    assert _temps(files.root) and _temps(files.root)[0].stat().st_size > 0
    await writer.abort()
    assert not files.path(key).exists()
    assert _temps(files.root) == []
    assert _visible(files.root) == []


async def test_two_writers_for_one_key_never_mix(files: storage.LocalStorage) -> None:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    first, second = files.writer(key), files.writer(key)
    await first.write(b"first")
    await second.write(b"second")
    await second.abort()
    await first.finish()
    assert files.path(key).read_bytes() == b"first"


async def test_delete(files: storage.LocalStorage) -> None:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    writer = files.writer(key)
    await writer.write(b"x")
    await writer.finish()
    assert await files.delete(key) is True
    assert not files.path(key).exists()
    assert await files.delete(key) is False


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "ab/../../x",
        "",
        "ab",
        f"zz/{RID}.{LEASE}",  # prefix not hex
        f"ab/{RID}",  # no lease part
        f"ab/{RID}.{LEASE}/../../x",
        f"ab/{RID}.{LEASE}\n",  # a trailing newline is not part of a key
        f"ab/{RID}.{LEASE}\nx",
        f"AB/{RID.upper()}.{LEASE}",
    ],
)
async def test_keys_outside_the_pattern_are_refused(files: storage.LocalStorage, key: str) -> None:
    with pytest.raises(storage.StorageError):
        files.path(key)
    with pytest.raises(storage.StorageError):
        files.writer(key)
    with pytest.raises(storage.StorageError):
        await files.delete(key)
    assert _temps(files.root) == []


def test_path_stays_under_root(files: storage.LocalStorage) -> None:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    path = files.path(key)
    assert path.resolve().is_relative_to(files.root)


async def test_a_small_file_touches_the_disk_only_in_finish(files: storage.LocalStorage) -> None:
    # The temp file is created on the thread that finishes a small file (one hop), and the
    # key's directory, missing here, is made there too.
    rid = uuid.uuid4()
    key = storage.key_for(rid, uuid.uuid4())
    writer = files.writer(key)
    await writer.write(b"a,b\n1,2\n")
    assert _temps(files.root) == []
    assert not files.path(key).parent.exists()
    assert await writer.finish() == (8, hashlib.sha256(b"a,b\n1,2\n").hexdigest())
    assert files.path(key).read_bytes() == b"a,b\n1,2\n"
    # Another attempt's file: the same directory, which exists now.
    other = storage.key_for(rid, uuid.uuid4())
    writer = files.writer(other)
    await writer.write(b"x")
    await writer.finish()
    assert files.path(other).read_bytes() == b"x"
    assert _temps(files.root) == []


async def test_abort_before_any_bytes_reached_the_disk(files: storage.LocalStorage) -> None:
    writer = files.writer(storage.key_for(uuid.uuid4(), uuid.uuid4()))
    await writer.write(b"only buffered")
    await writer.abort()
    assert _temps(files.root) == [] and _visible(files.root) == []


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
30 25 0:27 / /dev/shm rw,relatime master:2 - ramfs none rw
31 27 0:28 / /srv/my\\040files rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/", "ext4"),
        ("/var/files", "ext4"),
        ("/dev/shm/files", "ramfs"),  # two mounts on /dev/shm: the last is on top
        ("/dev/shmem", "ext4"),  # not under /dev/shm
        ("/srv/my files/a", "tmpfs"),  # the mount point's space is escaped
    ],
)
def test_filesystem_of_reads_the_mount_that_holds_the_path(path: str, fstype: str) -> None:
    assert local.filesystem_of(Path(path), MOUNTINFO) == fstype


async def test_in_memory_a_small_file_is_finished_without_a_thread_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shm = Path("/dev/shm")
    if local.filesystem_of(shm) not in local.IN_MEMORY:
        pytest.skip("no tmpfs at /dev/shm")
    hops: list[object] = []
    real = asyncio.to_thread

    async def counted(func: Any, *args: Any) -> Any:
        hops.append(func)
        return await real(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    with tempfile.TemporaryDirectory(dir=shm) as root:
        files = storage.LocalStorage(Path(root))
        files.ensure()
        assert files.in_memory
        small = storage.key_for(uuid.uuid4(), uuid.uuid4())
        writer = files.writer(small)
        await writer.write(b"x" * local.INLINE_MAX)
        assert await writer.finish() == (
            local.INLINE_MAX,
            hashlib.sha256(b"x" * local.INLINE_MAX).hexdigest(),
        )
        assert files.path(small).read_bytes() == b"x" * local.INLINE_MAX
        assert hops == []
        # One byte more: on a thread, as on disk.
        big = storage.key_for(uuid.uuid4(), uuid.uuid4())
        writer = files.writer(big)
        await writer.write(b"y" * (local.INLINE_MAX + 1))
        await writer.finish()
        assert files.path(big).stat().st_size == local.INLINE_MAX + 1
        assert len(hops) == 1
        assert _temps(files.root) == []


def test_on_disk_nothing_is_finished_inline(files: storage.LocalStorage) -> None:
    on = local.filesystem_of(files.root)
    assert files.in_memory == (on in local.IN_MEMORY)


async def test_a_source_reads_the_bytes_asked_for_and_gives_its_validators(
    files: storage.LocalStorage,
) -> None:
    """The download server's view of a stored file (``Storage.source``): its own size and
    validators (the row's are for a backend that has none), a path to send with sendfile,
    and ``read`` for a sender that cannot use it."""
    key = f"ab/{RID}.{LEASE}"
    data = os.urandom(10_000)
    writer = files.writer(key)
    await writer.write(data)
    await writer.finish()
    source = await files.source(key, size=1, etag='"the row\'s"')
    st = files.path(key).stat()
    assert (source.size, source.path) == (len(data), files.path(key))
    assert source.etag == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # what FileResponse sends
    assert source.last_modified is not None
    assert abs(source.last_modified.timestamp() - st.st_mtime) < 1e-5  # microseconds
    head = await files.head(key)
    assert head is not None and (head.size, head.etag) == (len(data), source.etag)
    for start, end, chunk in ((0, len(data) - 1, 4096), (10, 19, 3), (9_990, 9_999, 1 << 20)):
        chunks = [c async for c in source.read(start, end, chunk)]
        assert b"".join(chunks) == data[start : end + 1]
        assert all(len(c) <= chunk for c in chunks)
    backend: storage.Storage = files  # a directory has no URL of its own
    assert await backend.presigned_get(key, storage.Attachment("a/b", "x", "no-store")) is None
    await files.delete(key)
    assert await files.head(key) is None
    with pytest.raises(storage.GoneError):
        await files.source(key, size=len(data), etag='"x"')
    with pytest.raises(storage.GoneError):  # deleted after it was opened
        await anext(source.read(0, 9, 10))
