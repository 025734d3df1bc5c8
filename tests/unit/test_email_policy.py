"""The email policy with cached header classes renders exactly what the stdlib's does."""

from __future__ import annotations

import email.policy
import re
import uuid
from email.message import EmailMessage
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from bgworker.effects import mail
from tests import helpers

SENDER = "bgworker <bgworker@example.com>"
DATE = re.compile(rb"^Date: .*\r?\n", re.MULTILINE)
BOUNDARY = re.compile(rb"={15}\d+==")


def _context(filename: str, language: str) -> dict[str, object]:
    return {
        "request_id": str(uuid.UUID(int=7)),
        "filename": filename,
        "size": 1_572_864,
        "expires_at": "2026-12-01T10:00:00+00:00",
        "timezone": "Europe/Paris",
        "language": language,
        "download_url": "http://files.example.com/download/TOKEN",
    }


def _wire(message: EmailMessage) -> bytes:
    """The bytes sent, without what differs between two renders (Date, MIME boundary)."""
    return BOUNDARY.sub(b"BOUNDARY", DATE.sub(b"", message.as_bytes()))


@settings(max_examples=helpers.examples(40), deadline=None)
@given(
    # Control characters never reach a subject (events refuse them in names).
    filename=st.text(
        st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
    ).filter(lambda s: s.strip() != ""),
    language=st.sampled_from(["en", "fr", "de", "nl", "ja"]),
    to=st.sampled_from(["ann@example.com", "Zoë <zoe@example.org>", "a.b+c@example.com"]),
)
def test_the_cached_policy_renders_the_same_bytes_as_the_default(
    filename: str, language: str, to: str
) -> None:
    ours = mail.render("ready", to, SENDER, _context(filename, language))
    assert ours.policy is mail.POLICY
    with mock.patch.object(mail, "POLICY", email.policy.default):
        theirs = mail.render("ready", to, SENDER, _context(filename, language))
    assert theirs.policy is email.policy.default
    assert _wire(ours) == _wire(theirs)


def test_header_classes_are_made_once() -> None:
    first = mail.render("ready", "ann@example.com", SENDER, _context("a.csv", "en"))
    second = mail.render("ready", "bob@example.com", SENDER, _context("b.csv", "en"))
    assert type(first["To"]) is type(second["To"])
    assert type(first["Subject"]) is type(second["Subject"])
    # The stdlib's registry makes a new class each time (what the cache saves).
    assert email.policy.default.header_factory("To", "a@example.com").__class__ is not (
        email.policy.default.header_factory("To", "b@example.com").__class__
    )
