"""Fair share: the limits one tenant or one file type is held to (``BGWORKER_FAIRNESS__*``).

A tenant is the fairness key of a request (``events.tenant_of``). Caps bound how many
requests run at once, counted across every worker by their live leases in PostgreSQL
(``store/fairness.py``): per tenant (a default and overrides) and per file type. A request
over a cap is *parked* in PostgreSQL until one of its slots frees (docs/architecture.md,
"Fair share"). Every worker of a deployment must run with the same limits.

Limit maps come from the environment as ``name=N`` pairs separated by commas
(``BGWORKER_FAIRNESS__TENANT_LIMITS=acme=2,big=8``) or as a JSON object, which can hold a
name with a comma or an equals sign.
"""

from __future__ import annotations

import json
from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

# A cap above any concurrency a deployment runs: "no cap" in SQL, where NULL would need a
# branch in every comparison.
UNLIMITED: Final = 1_000_000_000
MAX_LIMIT: Final = 1_000_000


def parse_limits(value: object) -> object:
    """``"a=1,b=2"`` or a JSON object into a dict; anything else goes to pydantic as is
    (which then says what is wrong). ValueError for a pair without ``=``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{"):
        return json.loads(text)
    limits: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, number = part.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"{part.strip()!r} is not name=N")
        limits[name.strip()] = number.strip()
    return limits


class FairnessSettings(BaseModel):
    # Requests of one tenant running at once on the whole deployment; 0: no cap.
    tenant_in_flight: int = Field(0, ge=0, le=MAX_LIMIT)
    # Per-tenant caps that replace tenant_in_flight for those tenants ("big=8,small=1").
    tenant_limits: Annotated[dict[str, Annotated[int, Field(ge=1, le=MAX_LIMIT)]], NoDecode] = (
        Field(default_factory=dict)
    )
    # Requests of one file type running at once on the whole deployment ("ledger_export=2").
    file_type_limits: Annotated[dict[str, Annotated[int, Field(ge=1, le=MAX_LIMIT)]], NoDecode] = (
        Field(default_factory=dict)
    )

    # Fair share (work-conserving): a tenant alone uses every slot; while other tenants'
    # requests wait, each freed slot takes the waiting request of the tenant with the fewest
    # running, the oldest first (docs/architecture.md, "Fair share"). Off by default: under
    # load it moves the backlog from the work queue into PostgreSQL, so the queue's depth no
    # longer shows it (what autoscalers and alerts watch); a deployment turns it on knowing
    # that. The hard caps above still hold, with it or without.
    share: bool = False

    # Requests one tenant may make in any hour and any day (rolling windows; 0: no quota),
    # counted when a worker first records a request or POST /requests accepts it.
    quota_per_hour: int = Field(0, ge=0, le=MAX_LIMIT * 1000)
    quota_per_day: int = Field(0, ge=0, le=MAX_LIMIT * 1000)
    # An AMQP request over its quota: "wait" (put on a retry queue, tried again once the
    # window has room) or "fail" (failed and dead-lettered with reason over_quota; the same
    # id published again later supersedes it). POST /requests answers 429 either way.
    over_quota: Literal["wait", "fail"] = "wait"

    _parse = field_validator("tenant_limits", "file_type_limits", mode="before")(parse_limits)

    @field_validator("tenant_limits", "file_type_limits")
    @classmethod
    def _check_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not name or any(c in name for c in "\r\n"):
                raise ValueError(f"{name!r}: a name must be non-empty, on one line")
        return value

    def tenant_cap(self, tenant: str) -> int | None:
        """The in-flight cap of ``tenant``; None: uncapped."""
        return self.tenant_limits.get(tenant) or self.tenant_in_flight or None

    def file_type_cap(self, file_type: str) -> int | None:
        return self.file_type_limits.get(file_type)

    def quotas(self) -> list[tuple[str, int, int]]:
        """(name, limit, window seconds) of every quota set, the shorter window first."""
        found = [("per_hour", self.quota_per_hour, 3600), ("per_day", self.quota_per_day, 86400)]
        return [q for q in found if q[1]]

    @property
    def capping(self) -> bool:
        """Any cap at all: only then do finished jobs wake parked requests (the sweep wakes
        them regardless, so requests parked under older limits are never stranded)."""
        return bool(self.tenant_in_flight or self.tenant_limits or self.file_type_limits)

    def limits_tenant(self, tenant: str) -> bool:
        """Whether a claim of ``tenant`` must take its lock: a cap or a quota applies."""
        return self.tenant_cap(tenant) is not None or bool(self.quotas())
