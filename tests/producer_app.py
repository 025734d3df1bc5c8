"""A Django producer in a process of its own, for the publish-on-commit tests
(tests/integration/test_publish_on_commit.py): one order row and one FileRequested in one
``transaction.atomic`` block, then what the mode says. Prints the request id first.

    python -m tests.producer_app MODE     # env: BGWORKER_DATABASE_URL, _AMQP_URL, _NAMESPACE

- ``outbox-commit-kill``: the event into the producer outbox; commit; then SIGKILL itself
  at once, before anything else can run (the relay must still publish it).
- ``outbox-rollback``: the same, rolled back (nothing must be published).
- ``on-commit``: ``transaction.on_commit`` publishes after the commit.
- ``on-commit-rollback``: the same, rolled back (nothing published).
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.db import connection, transaction

from bgworker.contract import events
from bgworker.messaging import publisher
from bgworker.producing import outbox


class Rollback(Exception):
    """Raised inside the atomic block: Django rolls the transaction back."""


def setup() -> None:
    url = urlsplit(os.environ["BGWORKER_DATABASE_URL"])
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.path.lstrip("/"),
                "USER": url.username or "postgres",
                "PASSWORD": url.password or "",
                "HOST": url.hostname or "127.0.0.1",
                "PORT": str(url.port or 5432),
            }
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()


def main(mode: str) -> None:
    setup()
    event = events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={"size": 64})
    print(event.id, flush=True)
    pub = None
    if mode.startswith("on-commit"):
        pub = publisher.SyncPublisher(
            os.environ["BGWORKER_AMQP_URL"], namespace=os.environ["BGWORKER_NAMESPACE"]
        )
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO app_orders (request_id) VALUES (%s)", [str(event.id)])
            if pub is not None:
                outbox.django_on_commit(event, pub)
            else:
                outbox.django_enqueue(event)
            if mode.endswith("rollback"):
                raise Rollback
    except Rollback:
        pass
    if mode == "outbox-commit-kill":
        os.kill(os.getpid(), signal.SIGKILL)  # right after the commit: nothing else runs
    if pub is not None:
        pub.close()


if __name__ == "__main__":
    main(sys.argv[1])
