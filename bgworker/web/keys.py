"""Typed application state: every ``web.AppKey`` the app stores, in one place.

aiohttp keys state by ``AppKey`` objects rather than strings, so a lookup is typed and two
modules cannot collide on a name (aiohttp 3.9+; a string key warns since 3.10). A sub-app
reads the parent's values through ``request.config_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.contract import fairness
from bgworker.links import tokens
from bgworker.web import admin_auth, gateway, identity

# Set by create_app for every route.
STORE: Final = web.AppKey("store", store.Store)
STORAGE: Final[web.AppKey[storage.Storage]] = web.AppKey("storage")
SIGNER: Final = web.AppKey("signer", tokens.Signer)
IDENTITY: Final[web.AppKey[identity.Identity]] = web.AppKey("identity")
CHUNK_SIZE: Final = web.AppKey("chunk_size", int)
# settings.download_mode(): how /download sends the bytes (auto already resolved).
DOWNLOAD_MODE: Final = web.AppKey("download_mode", str)
# settings.web.accel_prefix when download_mode is "accel" (nginx sends the bytes), else None.
ACCEL_PREFIX: Final[web.AppKey[str | None]] = web.AppKey("accel_prefix")
# Base of the links the console issues (settings.web.public_url), as the worker's emails have.
PUBLIC_URL: Final = web.AppKey("public_url", str)
# The operator's template directory (settings.template_dir), read by the requester's page.
TEMPLATE_DIR: Final[web.AppKey[Path | None]] = web.AppKey("template_dir")
# settings.web: the "my files" page reads its rate limit and listing window from it.
WEB_SETTINGS: Final = web.AppKey("web_settings", settings_mod.WebSettings)

# Set by the admin console's sub-app (web/admin.py).
ADMIN_AUTH: Final = web.AppKey("admin_auth", admin_auth.Auth)
# (AMQP URL, namespace, queue type): the console opens its own broker connection per page.
ADMIN_AMQP: Final[web.AppKey[tuple[str, str, str]]] = web.AppKey("admin_amqp")
# POST /erasures: (AMQP URL, namespace, queue type) of the dead-letter queue it erases from.
DLQ_ADDRESS: Final[web.AppKey[tuple[str, str, str]]] = web.AppKey("dlq_address")

# Set by the front door (web/front_door.py), only when API keys are configured.
API_KEYS: Final[web.AppKey[tuple[bytes, ...]]] = web.AppKey("api_keys")
GATEWAY: Final = web.AppKey("gateway", gateway.Gateway)
# Fair share's quotas, which POST /requests answers 429 for.
FAIRNESS: Final = web.AppKey("fairness", fairness.FairnessSettings)
