"""Redirect mode against real object stores (moto, and SeaweedFS, which checks presigned
signatures): the validators a HEAD through bgworker gives are the ones the redirected GET
carries and the store evaluates, and the presigned answer is ``private, no-store`` as our
own downloads are."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from tests import s3
from tests.helpers import Publish, StartServer, StartWorker, wait_for_status
from tests.integration.downloads import fetch

# Two parts of the tests' 5 MiB: the store's ETag is a multipart one ("<md5>-2").
SIZE = s3.PART_SIZE + 1024 * 1024


@pytest.fixture
def storage_backend() -> str:
    return "s3"


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def s3_server(
    request: pytest.FixtureRequest,
    s3_server: s3.S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[s3.S3Server]:
    """The session's moto, then a SeaweedFS of this module's own."""
    if request.param == "moto":
        yield s3_server
        return
    with s3.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
async def big(db: store.Store, publish: Publish, start_worker: StartWorker) -> store.RequestRow:
    await start_worker()
    event = await publish("blob", {"size": SIZE, "seed": 3}, filename="big.bin")
    return await wait_for_status(db, event.id, "ready")


async def test_head_gives_the_validators_of_the_redirected_get(
    s3_server: s3.S3Server,
    settings: settings_mod.Settings,
    start_server: StartServer,
    big: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    settings.web.download_mode = "redirect"
    url = f"{await start_server()}/download/{signer.general(big.id)}"
    status, head, body = await fetch("HEAD", url)
    assert (status, body, head["Content-Length"]) == (200, b"", str(SIZE))
    assert head["Cache-Control"] == "private, no-store"
    etag = head["ETag"]
    assert etag.endswith('-2"')  # the store's multipart ETag, not our sha256

    status, hdrs, _ = await fetch("GET", url)
    assert status == 302
    location = hdrs["Location"]
    assert parse_qs(urlsplit(location).query)["response-cache-control"] == ["private, no-store"]
    status, got, data = await fetch("GET", location)
    assert status == 200 and hashlib.sha256(data).hexdigest() == big.sha256
    assert (got["ETag"], got["Last-Modified"]) == (etag, head["Last-Modified"])
    assert got["Cache-Control"] == "private, no-store"

    # A client sends its validators on along the redirect; the store evaluates them. (Of
    # the two, only AWS itself honours If-Range; both honour If-None-Match.)
    status, _, data = await fetch("GET", location, headers={"If-None-Match": etag})
    assert (status, data) == (304, b"")
    resume = {"Range": f"bytes={SIZE - 10}-", "If-Range": etag}
    status, got, data = await fetch("GET", location, headers=resume)
    assert (status, got["Content-Range"], len(data)) == (
        206,
        f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}",
        10,
    )
