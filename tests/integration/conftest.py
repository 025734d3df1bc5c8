"""Fixtures of the download tests (test_downloads, test_download_refusals)."""

from __future__ import annotations

import pytest

from bgworker import settings as settings_mod
from bgworker import store, tokens
from tests.helpers import Publish, StartWorker, wait_for_status
from tests.integration.downloads import CONTENT_TYPE, FILENAME, SEED, SIZE


@pytest.fixture
def signer(settings: settings_mod.Settings) -> tokens.Signer:
    return tokens.Signer(settings.tokens)


@pytest.fixture
async def ready(db: store.Store, publish: Publish, start_worker: StartWorker) -> store.RequestRow:
    """A request made ready by a real worker, owned by requester ``alice``."""
    await start_worker()
    event = await publish(
        "blob",
        {"size": SIZE, "seed": SEED},
        filename=FILENAME,
        content_type=CONTENT_TYPE,
        requester={"id": "alice"},
    )
    return await wait_for_status(db, event.id, "ready")
