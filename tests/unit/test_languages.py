"""Languages: BCP 47 fallback, the shipped catalogs, localized emails, template overrides."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from babel.messages import extract, mofile, pofile
from hypothesis import given
from hypothesis import strategies as st

from bgworker import languages
from bgworker.effects import mail as mail_mod

TEMPLATES = Path(languages.__file__).parent / "templates"
CATALOGS = ("fr", "nl", "de")
SENDER = "bgworker <bgworker@example.com>"


def ready_context(language: str, **extra: object) -> dict[str, object]:
    return {
        "request_id": str(uuid.UUID(int=7)),
        "filename": "logins.csv",
        "size": 1_572_864,
        "expires_at": "2026-12-01T10:00:00+00:00",
        "timezone": "Europe/Paris",
        "language": language,
        "download_url": "http://files.example.com/download/TOKEN",
        **extra,
    }


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("fr", "fr"),
        ("fr-CA", "fr"),
        ("de-AT", "de"),
        ("nl_BE", "nl"),
        ("NL", "nl"),
        ("en-GB", "en"),
        ("pt-BR", "en"),  # pt_BR, then pt: neither shipped, so English
        ("zh-Hant-TW", "en"),
        ("xx", "en"),
        ("", "en"),
        (None, "en"),
        ("../../etc", "en"),
    ],
)
def test_locale_falls_back_subtag_by_subtag_then_to_english(
    language: str | None, expected: str
) -> None:
    assert languages.locale_for(language) == expected


def test_candidates_drop_subtags_from_the_end() -> None:
    assert languages.candidates("pt-BR") == ["pt_BR", "pt"]
    assert languages.candidates("zh-Hant-TW") == ["zh_Hant_TW", "zh_Hant", "zh"]
    assert languages.candidates("not a tag") == []


@given(st.text(max_size=40))
def test_any_language_string_gives_a_shipped_locale(language: str) -> None:
    assert languages.locale_for(language) in languages.SHIPPED


@given(st.text(max_size=200))
def test_any_accept_language_header_gives_a_shipped_locale(header: str) -> None:
    assert languages.from_accept_language(header) in languages.SHIPPED


def test_accept_language_uses_quality_order() -> None:
    assert languages.from_accept_language("pt-BR, de;q=0.5, fr;q=0.8") == "fr"
    assert languages.from_accept_language("nl-BE,nl;q=0.9,en;q=0.8") == "nl"
    assert languages.from_accept_language("fr;q=0, de") == "de"
    assert languages.from_accept_language(None) == "en"


@pytest.mark.parametrize("language", CATALOGS)
def test_compiled_catalog_matches_its_source(language: str) -> None:
    """The .mo files are committed (no build step for a wheel or a checkout); this keeps
    them equal to the .po they come from."""
    folder = languages.LOCALE_DIR / language / "LC_MESSAGES"
    with (folder / "bgworker.po").open("rb") as f:
        source = {m.id: m.string for m in pofile.read_po(f) if m.id}
    with (folder / "bgworker.mo").open("rb") as f:
        compiled = {m.id: m.string for m in mofile.read_mo(f) if m.id}
    assert compiled == source


@pytest.mark.parametrize("language", CATALOGS)
def test_every_template_string_is_translated(language: str) -> None:
    """Extracting the templates now gives exactly the catalog's messages, all translated."""
    method_map = [("email/**.j2", "jinja2"), ("pages/**.j2", "jinja2")]
    found = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract.extract_from_dir(TEMPLATES, method_map)
    }
    path = languages.LOCALE_DIR / language / "LC_MESSAGES" / "bgworker.po"
    with path.open("rb") as f:
        catalog = {m.id: m.string for m in pofile.read_po(f) if m.id}
    assert set(catalog) == found
    assert all(catalog.values())


def test_french_requester_gets_the_french_email() -> None:
    mail = mail_mod.render("ready", "ann@example.com", SENDER, ready_context("fr"))
    assert mail["Subject"] == "Votre fichier logins.csv est prêt"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    body = text.get_content()
    assert "Le fichier que vous avez demandé est prêt." in body
    assert "1,5 MiB" in body  # the French decimal comma
    # 10:00 UTC is 11:00 in Paris in December, written the French way.
    assert "1 décembre 2026" in body and "11:00:00" in body
    assert '<html lang="fr">' in html.get_content()


@pytest.mark.parametrize("language", ["xx", "pt-BR", "en"])
def test_unknown_language_gets_the_english_email(language: str) -> None:
    mail = mail_mod.render("ready", "ann@example.com", SENDER, ready_context(language))
    assert mail["Subject"] == "Your file logins.csv is ready"
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None
    body = text.get_content()
    assert "The file you asked for is ready." in body
    assert "December 1, 2026" in body and "11:00:00" in body


@pytest.mark.parametrize("language", ["en", "fr", "nl", "de"])
@given(error=st.text(min_size=1, max_size=80).filter(lambda s: s.strip()))
def test_failed_email_never_shows_the_exception(language: str, error: str) -> None:
    context = {
        "request_id": str(uuid.UUID(int=9)),
        "filename": "report.pdf",
        "attempts": 3,
        "language": language,
        "error": f"SECRET{error}",
    }
    mail = mail_mod.render("failed", "ann@example.com", SENDER, context)
    for part in mail.walk():
        if part.get_content_maintype() == "text":
            assert "SECRET" not in part.get_content()
    assert "SECRET" not in str(mail["Subject"])
    assert str(uuid.UUID(int=9)) in mail.as_string()


def test_template_in_the_override_directory_wins(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "ready.subject.j2").write_text(
        "{% trans %}ACME: {{ filename }} is waiting for you{% endtrans %}\n"
    )
    mail = mail_mod.render(
        "ready", "ann@example.com", SENDER, ready_context("de"), template_dir=tmp_path
    )
    assert mail["Subject"] == "ACME: logins.csv is waiting for you"  # no catalog entry: as written
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None and "Hallo," in text.get_content()  # the rest: shipped, in German
