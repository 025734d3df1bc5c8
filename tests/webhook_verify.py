"""The webhook verification code docs/producing.md shows a receiver, loaded from the page
itself so the tests run exactly what a reader copies."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parents[1] / "docs" / "producing.md"
_BLOCK = re.compile(
    r"<!-- webhook-verify:start -->\n```python\n(.*?)```\n<!-- webhook-verify:end -->", re.S
)

Verify = Callable[[str, Mapping[str, str], bytes], Any]


def documented_verify() -> Verify:
    match = _BLOCK.search(PAGE.read_text(encoding="utf-8"))
    assert match, "docs/producing.md lost its webhook-verify block"
    namespace: dict[str, Any] = {}
    exec(compile(match[1], "docs/producing.md#webhook-verify", "exec"), namespace)
    verify: Verify = namespace["verify_webhook"]
    return verify
