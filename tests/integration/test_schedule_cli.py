"""``bgworker schedules create|list|pause|resume|end``: the real CLI against PostgreSQL; and
the console's schedules page with the same actions."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import schedules as contract
from tests import tcp_proxy
from tests.helpers import REPO, settings_env
from tests.integration.console import client, log_in

pytestmark = pytest.mark.asyncio


async def cli(settings: settings_mod.Settings, *args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bgworker",
        "schedules",
        *args,
        cwd=REPO,
        env=settings_env(settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_create_list_pause_resume_end(
    db: store.Store, settings: settings_mod.Settings
) -> None:
    sid = str(uuid.uuid4())
    body: dict[str, Any] = {
        "id": sid,
        "cron": "0 8 * * 1-5",
        "request": {"file_type": "blob", "requester": {"email": "bo@example.com"}},
    }
    code, out, _ = await cli(settings, "create", "-", stdin=json.dumps(body))
    assert code == 0 and f"schedule {sid} created" in out
    code, out, _ = await cli(settings, "create", "-", stdin=json.dumps(body))
    assert code == 0 and "already exists" in out

    code, out, _ = await cli(settings, "list", "--json")
    [listed] = json.loads(out)
    assert (listed["id"], listed["status"], listed["requester"]) == (
        sid,
        "active",
        "bo@example.com",
    )

    assert (await cli(settings, "pause", sid))[0] == 0
    assert (await db.schedules.get(uuid.UUID(sid))).status == "paused"  # type: ignore[union-attr]
    code, _, err = await cli(settings, "pause", sid)
    assert code == 1 and "cannot pause (paused)" in err
    assert (await cli(settings, "resume", sid))[0] == 0
    assert (await db.schedules.get(uuid.UUID(sid))).status == "active"  # type: ignore[union-attr]
    code, out, _ = await cli(settings, "end", sid)
    assert code == 0 and "ended" in out
    ended = await db.schedules.get(uuid.UUID(sid))
    assert ended is not None and (ended.status, ended.ended_reason) == ("ended", "operator")
    code, _, err = await cli(settings, "resume", sid)
    assert code == 1 and "cannot resume (ended)" in err
    code, out, _ = await cli(settings, "list", "--status", "active")
    assert sid not in out


async def test_hostile_input_is_refused_with_the_field(settings: settings_mod.Settings) -> None:
    bad = {"id": str(uuid.uuid4()), "cron": "every day", "request": {"file_type": "blob"}}
    code, _, err = await cli(settings, "create", "-", stdin=json.dumps(bad))
    assert code == 1 and "cron" in err
    code, _, err = await cli(settings, "create", "-", stdin="{not json")
    assert code == 1 and err.startswith("schedules:")
    code, _, err = await cli(settings, "end", str(uuid.uuid4()))
    assert code == 1 and "not found" in err


async def test_console_lists_pauses_resumes_and_ends(console: str, db: store.Store) -> None:
    request = contract.ScheduleRequested.model_validate(
        {
            "id": str(uuid.uuid4()),
            "cron": "15 6 * * *",
            "request": {"file_type": "blob", "requester": {"id": "<script>x</script>"}},
        }
    )
    assert await db.schedules.create(request, datetime.now(UTC))
    base = f"{console}/admin/schedules"
    async with client() as http:
        # Actions need a session (else the login page) and its CSRF token.
        pause = f"{base}/{request.id}/pause"
        async with http.post(pause, data={"csrf": "x"}, allow_redirects=False) as r:
            assert r.status in (303, 401)
        assert (await db.schedules.get(request.id)).status == "active"  # type: ignore[union-attr]
        token = await log_in(http, console)
        async with http.post(pause, data={"csrf": "forged"}) as r:
            assert r.status == 403
        assert (await db.schedules.get(request.id)).status == "active"  # type: ignore[union-attr]
        async with http.get(base) as r:
            page = await r.text()
            assert str(request.id) in page and "15 6 * * *" in page
            assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
        for action, status in (("pause", "paused"), ("resume", "active"), ("end", "ended")):
            async with http.post(f"{base}/{request.id}/{action}", data={"csrf": token}) as r:
                assert r.status == 200 and f"Done: {action}." in await r.text()
            assert (await db.schedules.get(request.id)).status == status  # type: ignore[union-attr]
        async with http.post(f"{base}/{request.id}/resume", data={"csrf": token}) as r:
            assert "Not possible in this status: resume." in await r.text()
        async with http.get(base, params={"status": "bogus"}) as r:
            assert r.status == 400
        async with http.post(f"{base}/{request.id}/explode", data={"csrf": token}) as r:
            assert r.status == 404


async def test_front_door_post_schedules(
    db: store.Store, settings: settings_mod.Settings, start_server: Any
) -> None:
    settings.web.api_keys = [SecretStr("sched-key")]
    base = await start_server()
    url = f"{base}/schedules"
    auth = {"Authorization": "Bearer sched-key"}
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "cron": "0 7 * * *",
        "request": {"file_type": "blob", "requester": {"timezone": "Asia/Tokyo"}},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body) as r:
            assert r.status == 401
        async with http.post(url, json=body, headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with http.post(url, json=body, headers=auth) as r:
            assert r.status == 201
            answer = await r.json()
            assert answer["next_run_local"].endswith("T07:00:00+09:00")
        async with http.post(url, json=body, headers=auth) as r:
            assert r.status == 200  # the same schedule again
        async with http.post(url, json=body | {"cron": "0 8 * * *"}, headers=auth) as r:
            assert r.status == 409
        async with http.post(url, json=body | {"cron": "bogus"}, headers=auth) as r:
            # Refused with the body POST /requests refuses with: status, reason, errors.
            refused = await r.json()
            assert r.status == 422 and refused["errors"][0]["location"] == "cron"
            assert refused["status"] == 422 and refused["reason"] == "invalid_schema"
        dup = b'{"id": "x", "id": "y"}'
        headers = auth | {"Content-Type": "application/json"}
        async with http.post(url, data=dup, headers=headers) as r:
            assert r.status == 400 and (await r.json())["reason"] == "malformed_json"
        async with http.post(url, data=b"[1]", headers=headers) as r:
            assert r.status == 422  # JSON, but not an object
        latin = auth | {"Content-Type": "application/json; charset=latin-1"}
        async with http.post(url, data=json.dumps(body), headers=latin) as r:
            assert r.status == 415
        async with http.post(url, data=io.BytesIO(b"x" * (2 << 20)), headers=headers) as r:
            assert r.status == 413 and (await r.json())["status"] == 413
    stored = await db.schedules.get(uuid.UUID(body["id"]))
    assert stored is not None and stored.cron == "0 7 * * *" and stored.timezone == "Asia/Tokyo"


async def test_post_schedules_answers_503_while_postgresql_is_away(
    settings: settings_mod.Settings, start_server: Any
) -> None:
    """The server's PostgreSQL goes away (its proxy stops listening and resets what is
    open): POST /schedules answers 503 with Retry-After, as POST /requests does, not a 500."""
    settings.web.api_keys = [SecretStr("sched-key")]
    auth = {"Authorization": "Bearer sched-key"}
    url = settings.database_url.get_secret_value()

    def body() -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "cron": "0 7 * * *", "request": {"file_type": "blob"}}

    async with tcp_proxy.proxy_to(url) as proxy:
        settings.database_url = SecretStr(proxy.url(url))
        base = await start_server()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/schedules", json=body(), headers=auth) as r:
                assert r.status == 201
            await proxy.refuse()
            async with http.post(f"{base}/schedules", json=body(), headers=auth) as r:
                answer = await r.json()
                assert r.status == 503, answer
                assert r.headers["Retry-After"] == "5" and answer["status"] == 503
