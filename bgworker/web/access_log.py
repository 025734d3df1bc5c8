"""An access log that never writes download tokens (they grant access to files)."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_TOKEN_PATH: Final = re.compile(r"^/(download|status)/[^/?]+")


def redact(path: str) -> str:
    return _TOKEN_PATH.sub(lambda m: f"/{m[1]}/<token>", path)


class RedactingAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %s %.3fs',
            request.remote,
            request.method,
            redact(request.rel_url.path),
            response.status,
            response.body_length,
            time,
        )
