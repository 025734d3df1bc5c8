"""The S3 backend against real S3 servers: moto's (writes, aborts, a sync handler's
writer, `clean`) and SeaweedFS (presigned URLs: it checks SigV4 signatures and expiry,
which moto does not). Each test has its own bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from pydantic import SecretStr
from types_aiobotocore_s3 import S3Client

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.ops import cleanup
from bgworker.storage import s3 as backend
from tests import s3
from tests.handlers import blob_bytes
from tests.helpers import (
    Publish,
    StartWorker,
    get_row,
    stored_bytes,
    stored_keys,
    wait_for_status,
)

PART = s3.PART_SIZE


@pytest.fixture
def storage_backend() -> str:
    return "s3"


async def _uploads(s3_files: backend.S3Storage) -> list[str]:
    listing = await s3_files.client.list_multipart_uploads(Bucket=s3_files.bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


async def _objects(s3_files: backend.S3Storage) -> list[str]:
    listing = await s3_files.client.list_objects_v2(Bucket=s3_files.bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def _key() -> str:
    return storage.key_for(uuid.uuid4(), uuid.uuid4())


async def test_a_multipart_file_is_invisible_until_finished(s3_files: backend.S3Storage) -> None:
    key = _key()
    data = os.urandom(2 * PART + 12345)  # three parts, the last one short
    writer = s3_files.writer(key)
    for start in range(0, len(data), 100_000):
        await writer.write(data[start : start + 100_000])
    assert await _objects(s3_files) == []  # parts uploaded, nothing visible
    assert await _uploads(s3_files) == [s3_files.object_key(key)]
    assert not await s3_files.exists(key)
    size, digest = await writer.finish()
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert await _uploads(s3_files) == []
    assert await s3_files.size(key) == len(data)
    got = await s3_files.get(key)
    assert b"".join([c async for c in got.chunks(PART)]) == data


async def test_abort_leaves_no_object_and_no_upload(s3_files: backend.S3Storage) -> None:
    key = _key()
    writer = s3_files.writer(key)
    await writer.write(os.urandom(PART + 10))  # one part reached the server
    assert await _uploads(s3_files) != []
    await writer.abort()
    assert await _uploads(s3_files) == []
    assert await _objects(s3_files) == []
    small = s3_files.writer(_key())
    await small.write(b"never stored")  # below one part: nothing sent before finish
    await small.abort()
    assert await _objects(s3_files) == []


async def test_a_small_file_is_one_put(s3_files: backend.S3Storage) -> None:
    key = _key()
    writer = s3_files.writer(key)
    await writer.write(b"")
    assert await writer.finish() == (0, hashlib.sha256(b"").hexdigest())
    assert await s3_files.exists(key) and await s3_files.size(key) == 0


async def test_a_sync_handler_writes_from_its_thread(s3_files: backend.S3Storage) -> None:
    key = _key()
    data = os.urandom(PART + 777)
    writer = s3_files.writer(key)
    blocking = storage.BlockingWriter(writer)

    def handler() -> None:  # a plain def on its own thread, as execution runs one
        for start in range(0, len(data), 65536):
            blocking.write(data[start : start + 65536])

    await asyncio.to_thread(handler)
    blocking.close()
    with pytest.raises(storage.StorageError):
        blocking.write(b"late")  # the attempt has ended
    assert await writer.finish() == (len(data), hashlib.sha256(data).hexdigest())
    got = await s3_files.get(key)
    assert b"".join([c async for c in got.chunks(PART)]) == data


async def test_keys_are_checked_and_prefixed(s3_files: backend.S3Storage) -> None:
    key = _key()
    assert s3_files.object_key(key) == f"files/{key}"
    for bad in ("../etc/passwd", key + "\n", "files/" + key, ""):
        with pytest.raises(storage.StorageError):
            s3_files.writer(bad)
    with pytest.raises(storage.StorageError):
        await s3_files.remove_part("other/" + key + "\nupload")


async def test_sync_handler_file_on_s3_end_to_end(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    size = 2 * PART + 99  # several parts sent from the handler's thread
    event = await publish("sync_sleep", {"size": size, "seed": 4, "seconds": 0.1})
    row = await wait_for_status(db, event.id, {"ready", "failed"})
    assert row.status == "ready", row.last_error
    assert await stored_bytes(settings, row) == blob_bytes(size, 4)
    assert await stored_keys(settings) == [row.storage_key]
    assert not settings.storage_dir.exists()  # a worker on S3 needs no local directory


async def test_a_failed_attempt_aborts_its_upload(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    s3_files: backend.S3Storage,
) -> None:
    await start_worker()
    criteria = {"size": PART + 1, "seconds": 0.1, "permanent": True}  # one part was sent
    event = await publish("fail_after", criteria)
    await wait_for_status(db, event.id, "failed")
    assert await _uploads(s3_files) == []
    assert await _objects(s3_files) == []


async def test_clean_deletes_expired_and_orphans_and_aborts_dangling_uploads(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    s3_files: backend.S3Storage,
) -> None:
    await start_worker()
    old = await publish("blob", {"size": 5000, "seed": 1})
    live = await publish("blob", {"size": 7000, "seed": 3})
    rows = {e.id: await wait_for_status(db, e.id, "ready") for e in (old, live)}
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() - interval '2 hours' WHERE id = $1",
        old.id,
    )
    orphan = s3_files.writer(_key())  # an attempt that lost its lease after completing
    await orphan.write(b"x" * 10)
    await orphan.finish()
    outside = "elsewhere/" + _key()  # not under our prefix: never touched
    await s3_files.client.put_object(Bucket=s3_files.bucket, Key=outside, Body=b"keep")
    # Under the prefix but not one of our keys (another app, an operator): never touched,
    # and no reason for clean to fail (it raised "not one of our uploads").
    foreign = s3_files.prefix + "someone-elses.bin"
    await s3_files.client.create_multipart_upload(Bucket=s3_files.bucket, Key=foreign)

    young = await cleanup.clean(db, s3_files)  # default age: the orphan is too young to go
    assert (young.expired, young.orphans) == (1, 0)
    # (moto reports every upload as initiated in 2010: the upload's age check is tested
    # on SeaweedFS below.)
    dangling = s3_files.writer(_key())  # a worker killed mid-upload
    await dangling.write(os.urandom(PART))
    assert len(await _uploads(s3_files)) == 2
    dry = await cleanup.clean(db, s3_files, orphan_age_seconds=-1, dry_run=True)
    assert (dry.orphans, dry.temp_parts, dry.bytes_freed) == (1, 1, 10)
    assert len(await _uploads(s3_files)) == 2

    report = await cleanup.clean(db, s3_files, orphan_age_seconds=-1)
    assert (report.orphans, report.temp_parts) == (1, 1)
    assert await _uploads(s3_files) == [foreign]
    live_key = s3_files.object_key(str(rows[live.id].storage_key))
    assert sorted(await _objects(s3_files)) == sorted([live_key, outside])
    assert (await get_row(db, old.id)).status == "expired"


# -- presigned URLs, checked by a server that checks them ------------------------------


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    with s3.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_presigned_urls_refuse_tampering_and_expiry(seaweedfs: s3.S3Server) -> None:
    config = s3.storage_settings(seaweedfs, await s3.new_bucket(seaweedfs))
    s3_files = backend.S3Storage(config.model_copy(update={"presign_seconds": 2}))
    await s3_files.open()
    try:
        key, other = _key(), _key()
        for k in (key, other):
            writer = s3_files.writer(k)
            await writer.write(b"the file")
            await writer.finish()
        disposition = 'attachment; filename="report.csv"'
        attachment = storage.Attachment("text/csv", disposition, "no-store")
        url = await s3_files.presigned_get(key, attachment)
        signed_at = time.time()
        status, headers, body = await asyncio.to_thread(_get, url)
        assert (status, body) == (200, b"the file")
        assert headers["Content-Disposition"] == disposition
        tampered = [
            url.replace("report.csv", "other.exe"),  # the name a requester sees
            url.replace("text%2Fcsv", "text%2Fhtml"),  # the type: no HTML from our bucket
            url.replace(key, other),  # another file
            url.replace("X-Amz-Expires=2", "X-Amz-Expires=9"),  # a longer life
        ]
        for bad in tampered:
            assert bad != url
            status, _, body = await asyncio.to_thread(_get, bad)
            assert status == 403 and b"the file" not in body, bad
        # Past its lifetime (the server's clock decides), the same URL is refused.
        await asyncio.sleep(max(0.0, signed_at + 3 - time.time()))
        status, _, body = await asyncio.to_thread(_get, url)
        assert status == 403 and b"the file" not in body
    finally:
        await s3_files.close()


async def test_the_client_for_tests_reaches_seaweedfs_only_signed(seaweedfs: s3.S3Server) -> None:
    # SeaweedFS with an identity refuses anonymous requests: the checks above are real.
    status, _, _ = await asyncio.to_thread(_get, f"{seaweedfs.url}/")
    assert status == 403
    session = get_session()
    client: S3Client
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=seaweedfs.url,
        aws_access_key_id=s3.ACCESS_KEY,
        aws_secret_access_key="wrong",
    ) as client:
        with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|403"):
            await client.list_buckets()


async def test_only_uploads_older_than_the_grace_period_are_stale(seaweedfs: s3.S3Server) -> None:
    s3_files = backend.S3Storage(s3.storage_settings(seaweedfs, await s3.new_bucket(seaweedfs)))
    await s3_files.open()
    try:
        writer = s3_files.writer(_key())
        await writer.write(os.urandom(PART))  # an upload in progress, one part sent
        assert (await s3_files.stale(time.time() - 60)).parts == []  # a live attempt's
        [part] = (await s3_files.stale(time.time() + 60)).parts
        await s3_files.remove_part(part)
        assert (await s3_files.stale(time.time() + 60)).parts == []
        await s3_files.remove_part(part)  # already gone: nothing to do, no error
    finally:
        await s3_files.close()


def test_settings_refuse_s3_without_a_bucket_and_wrong_download_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BGWORKER_STORAGE__S3_BUCKET"):
        settings_mod.StorageSettings(backend="s3")
    with pytest.raises(ValueError, match="ACCESS_KEY_ID"):
        settings_mod.StorageSettings(backend="s3", s3_bucket="b", s3_access_key_id="k")
    s3_storage = settings_mod.StorageSettings(backend="s3", s3_bucket="b")
    with pytest.raises(ValueError, match="DOWNLOAD_MODE=redirect needs"):
        settings_mod.Settings(web=settings_mod.WebSettings(download_mode="redirect"))
    with pytest.raises(ValueError, match="DOWNLOAD_MODE=accel needs"):
        settings_mod.Settings(
            storage=s3_storage, web=settings_mod.WebSettings(download_mode="accel")
        )
    assert settings_mod.Settings(storage=s3_storage).download_mode() == "redirect"
    assert settings_mod.Settings().download_mode() == "stream"
    with pytest.raises(ValueError):
        settings_mod.StorageSettings(s3_part_size_bytes=1024 * 1024)  # S3's minimum is 5 MiB


async def test_a_missing_bucket_is_one_clear_error_at_start(s3_server: s3.S3Server) -> None:
    files = backend.S3Storage(s3.storage_settings(s3_server, "no-such-bucket"))
    with pytest.raises(storage.StorageError, match=r"S3 bucket 'no-such-bucket' at http://"):
        await files.open()


async def test_a_wrong_secret_is_a_setting_to_fix_not_an_outage(
    seaweedfs: s3.S3Server,
) -> None:
    # SeaweedFS checks signatures (moto does not): a refusal is StorageError (exit 64), a
    # store that does not answer StorageUnavailableError (exit 69).
    config = s3.storage_settings(seaweedfs, await s3.new_bucket(seaweedfs))
    config.s3_secret_access_key = SecretStr("wrong")
    with pytest.raises(storage.StorageError, match="403, access denied") as caught:
        await backend.S3Storage(config).open()
    assert not isinstance(caught.value, storage.StorageUnavailableError)
    config.s3_endpoint_url = f"http://127.0.0.1:{s3.free_port()}"
    config.s3_timeout_seconds = 1
    with pytest.raises(storage.StorageUnavailableError, match="Could not connect"):
        await backend.S3Storage(config).open()
