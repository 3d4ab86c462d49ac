"""The results store: trials keyed by (spec_hash, seed), their epochs, and the sweeps using them.

`Store.open(url)` is the way in (see `service.store.api` and docs/store.md). Imported lazily, so
that `import service.store` stays cheap for the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.store.api import (
        ArmStatus,
        EpochRecorded,
        EpochValues,
        Event,
        Store,
        StoreError,
        SweepInfo,
        SweepStatus,
        TrialFailed,
        TrialFinished,
        TrialStarted,
        redact_url,
    )

__all__ = [
    "ArmStatus",
    "EpochRecorded",
    "EpochValues",
    "Event",
    "Store",
    "StoreError",
    "SweepInfo",
    "SweepStatus",
    "TrialFailed",
    "TrialFinished",
    "TrialStarted",
    "redact_url",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from service.store import api

        return getattr(api, name)
    raise AttributeError(f"module 'service.store' has no attribute {name!r}")
