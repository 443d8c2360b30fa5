"""A unit of work over the store: writes and the derived state they change commit together."""

from collections.abc import Iterator
from contextlib import contextmanager

from ecrf.auth.actor import Actor
from ecrf.db import reading, transaction
from ecrf.store.service import ClinicalStore
from ecrf.store.wiring import StoreWiring


@contextmanager
def writing(runtime: StoreWiring, actor: Actor) -> Iterator[ClinicalStore]:
    with transaction(runtime.engine) as session:
        store = ClinicalStore(session, actor, runtime.indexer, list(runtime.derived_hooks), list(runtime.write_guards))
        yield store
        store.finish()


@contextmanager
def read_only(runtime: StoreWiring, actor: Actor) -> Iterator[ClinicalStore]:
    with reading(runtime.engine) as session:
        yield ClinicalStore(session, actor, runtime.indexer)
