"""The requester's language: gettext catalogs, dates in their time zone, and templates.

Strings live in the templates and are translated through Jinja2's i18n extension from the
gettext catalogs in ``locale/<lang>/LC_MESSAGES/bgworker.po`` (compiled ``.mo`` files are
committed next to them; ``tests/unit/test_languages.py`` fails when one is stale). Languages are
BCP 47 tags (``pt-BR``); a tag falls back subtag by subtag to a shipped catalog, then to
English (RFC 4647 section 3.4, "lookup"). To change a string: ``pybabel extract -F babel.cfg
-o bgworker/locale/bgworker.pot bgworker/templates``, ``pybabel update -i
bgworker/locale/bgworker.pot -d bgworker/locale -D bgworker``, translate, then ``pybabel
compile -d bgworker/locale -D bgworker``.

Templates: a file in the operator's template directory (``BGWORKER_TEMPLATE_DIR``) at the same
relative path as a shipped one (``email/ready.subject.j2``, ``pages/page.html.j2``) wins.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from babel import dates, numbers, support

LOCALE_DIR: Final = Path(__file__).parent / "locale"
DOMAIN: Final = "bgworker"
DEFAULT: Final = "en"
# English is the templates' own text; the others have catalogs.
SHIPPED: Final = ("en", "fr", "nl", "de")

# A BCP 47 primary language subtag and the subtags after it (RFC 5646 section 2.1).
_SUBTAG: Final = re.compile(r"^[A-Za-z0-9]{1,8}$")


def candidates(language: str) -> list[str]:
    """``pt-BR`` -> ``["pt_BR", "pt"]``: the gettext locale names to try, most specific first
    (RFC 4647 lookup: drop subtags from the end). Anything that is not a tag gives ``[]``."""
    parts = language.replace("_", "-").split("-")
    if not parts or not all(_SUBTAG.fullmatch(p) for p in parts) or not parts[0].isalpha():
        return []
    primary = parts[0].lower()
    rest = [p.upper() if len(p) == 2 and p.isalpha() else p for p in parts[1:]]
    return ["_".join([primary, *rest[:n]]) for n in range(len(rest), -1, -1)]


def locale_for(language: str | None) -> str:
    """The shipped locale that serves ``language``; English when none does."""
    for name in candidates(language or ""):
        if name in SHIPPED:
            return name
    return DEFAULT


def from_accept_language(header: str | None) -> str:
    """The best shipped locale for an ``Accept-Language`` header (RFC 9110 section 12.5.4),
    for a page that has no requester to ask (a link nobody has recorded yet)."""
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate((header or "").split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and q > 0:
            ranked.append((-q, index, tag.strip()))
    for _, _, tag in sorted(ranked):
        for name in candidates(tag):
            if name in SHIPPED:
                return name
    return DEFAULT


@functools.cache
def translations(locale: str) -> support.NullTranslations:
    """The catalog of ``locale`` (English: none, the templates' text as written)."""
    return support.Translations.load(str(LOCALE_DIR), [locale], DOMAIN)


def zone(name: str | None) -> ZoneInfo:
    """The requester's time zone; UTC for a missing or unknown name (an event validated
    against an older tzdata may name one this process does not know)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_datetime(moment: datetime, timezone: str | None, locale: str) -> str:
    """``moment`` in the requester's zone and language, with the zone named
    (``30 novembre 2026 à 10:00:00 UTC+1``)."""
    return str(dates.format_datetime(moment, "long", tzinfo=zone(timezone), locale=locale))


def format_size(size: int, locale: str) -> str:
    """Binary units, the number in the locale's notation (``1,5 MiB`` in French)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            shown = (
                f"{value:.0f}"
                if unit == "B"
                else numbers.format_decimal(round(value, 1), format="#,##0.0", locale=locale)
            )
            return f"{shown} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_percent(fraction: float, locale: str) -> str:
    return str(numbers.format_percent(max(0.0, min(1.0, fraction)), locale=locale))


@functools.cache
def environment(template_dir: Path | None, locale: str) -> jinja2.Environment:
    """Templates in ``locale``: the operator's directory first, then the shipped ones
    (Jinja2 ``ChoiceLoader``). One environment per (directory, locale), built once."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.PackageLoader("bgworker", "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        extensions=["jinja2.ext.i18n"],
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    # newstyle: %-formatting inside the translated string escapes its variables under
    # autoescape, and a missing variable is an error rather than a silent "%(name)s".
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    return env
