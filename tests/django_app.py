"""A Django project of one view, for the inline-or-delay tests: served by wsgiref (a real
WSGI server) on a loopback socket. The test sets ``PRODUCER["value"]``."""

from __future__ import annotations

import uuid
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.urls import path

from bgworker import producing
from bgworker.contract import events

PRODUCER: dict[str, producing.SyncProducer] = {}


def export(request: HttpRequest) -> HttpResponseBase:
    """GET /export?rows=N&run=R: the report, inline or delayed."""
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type=request.GET.get("file_type", "report_sync"),
        criteria={
            "run": request.GET["run"],
            "rows": int(request.GET["rows"]),
            "pad": int(request.GET.get("pad", "0")),
        },
    )
    return producing.django_response(PRODUCER["value"].request(event))


urlpatterns: list[Any] = [path("export", export)]


def setup() -> None:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only",
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["127.0.0.1"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
