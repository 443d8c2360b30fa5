"""The interface the store owns for what runs around it: the derived-state hooks and the write guards it
calls inside every write's transaction, and the engine and indexer it works with.

The store knows no door and no domain: whoever starts the service (ecrf/runtime.py, wired from
ecrf/app.py) registers the hooks and guards here, e.g. `ecrf.eligibility.service.recompute` as a derived hook
and `ecrf.crf.guard.lifecycle_guard(study)` as a write guard.
"""

from typing import Protocol

from sqlalchemy.engine import Engine

from ecrf.store.indexing import Indexer
from ecrf.store.service import DerivedHook, WriteGuard

__all__ = ["DerivedHook", "StoreWiring", "WriteGuard"]


class StoreWiring(Protocol):
    """What `ecrf.store.unit.writing`/`read_only` need; ecrf.runtime.Runtime is one."""

    engine: Engine
    indexer: Indexer
    derived_hooks: list[DerivedHook]  # called with (store, patient ids) after the write, same transaction
    write_guards: list[WriteGuard]  # asked before a version of an existing resource is written or deleted
