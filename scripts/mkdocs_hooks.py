"""MkDocs hook: links from a page to files of the repository outside ``docs/``.

The pages link to ``../deploy/nginx/bgworker.conf``, ``../BENCHMARKS.md`` or a folder such as
``examples/node-producer/``, so that they open on GitHub. MkDocs knows only the pages of
``docs/`` and would report each as broken. This hook checks that the target exists in the
repository (a missing one is a warning, which fails ``mkdocs build --strict`` like any broken
link) and rewrites the link: to ``repo_url`` when mkdocs.yml sets one, else to its text and
the path, since the site itself does not publish those files.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.bgworker")

_LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)")


def _outside_target(page_path: str, target: str, docs: Path, repo: Path) -> str | None:
    """The repository-relative path of a link that MkDocs cannot resolve itself (outside
    docs/, or a folder), or None for a link it handles (pages, images, anchors, URLs)."""
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return None
    path = target.split("#", 1)[0]
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), path))
    inside = not joined.startswith("../") and joined != ".."
    if inside and not (docs / joined).is_dir():
        return None
    full = (docs / joined).resolve()
    relative = full.relative_to(repo).as_posix()
    return relative + ("/" if path.endswith("/") else "")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match[str]) -> str:
        text, target = match[1], match[2]
        relative = _outside_target(page.file.src_uri, target, docs, repo)
        if relative is None:
            return match[0]
        if not (repo / relative).exists():
            log.warning("%s links to %s, which is not in the repository", page.file.src_uri, target)
            return match[0]
        if repo_url:
            kind = "tree" if (repo / relative).is_dir() else "blob"
            return f"[{text}]({repo_url}/{kind}/HEAD/{relative})"
        return text if relative.rstrip("/") in text else f"{text} (`{relative}`)"

    return _LINK.sub(rewrite, markdown)
