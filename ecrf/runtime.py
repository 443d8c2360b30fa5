"""What a running service holds: settings, database engine, the loaded study and its hooks.

The app layer: it wires the domains' derived hooks and write guards into the store (ecrf/store/wiring.py);
below the app, code depends on the protocol ecrf.services.Services, never on this module."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from ecrf.auth.tokens import TokenVerifier
from ecrf.common.clock import utc_now
from ecrf.config import Settings
from ecrf.crf.ehr_entries import ehr_entries_hook
from ecrf.crf.guard import lifecycle_guard
from ecrf.crf.participation import participation_hook
from ecrf.db import make_engine
from ecrf.eligibility.service import randomisation_basis, recompute
from ecrf.endpoints.rules import load_rules
from ecrf.endpoints.service import endpoints_hook
from ecrf.randomisation.guard import allocation_guard
from ecrf.randomisation.scheme import load_scheme
from ecrf.safety import service as safety
from ecrf.safety.scheme import load_safety
from ecrf.store.indexing import Indexer
from study_model.loader import load_study
from study_model.definitions import StudyDef


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    study: StudyDef
    indexer: Indexer
    verifier: TokenVerifier
    derived_hooks: list[Any] = field(default_factory=list)
    write_guards: list[Any] = field(default_factory=list)
    randomisation: Any = None  # the study's randomisation scheme (ecrf/randomisation/scheme.py), None: off
    safety: Any = None  # the study's SAE reporting clock (ecrf/safety/scheme.py), None: off
    endpoints: Any = None  # the evidence of the derived endpoints (ecrf/endpoints/rules.py), None: none
    clock: Callable[[], datetime] = field(default=utc_now)  # the SAE clock's time (tests set it)

    @classmethod
    def start(cls, settings: Settings) -> "Runtime":
        study = load_study(settings.study_dir)
        randomisation = load_scheme(settings.study_dir, study)
        endpoints = load_rules(settings.study_dir, study)
        guards = [lifecycle_guard(study)]
        if randomisation is not None:  # no API changes an allocation, whichever door writes
            guards.append(allocation_guard(study.id, randomisation.identifier_system))
        runtime = cls(
            settings=settings,
            engine=make_engine(settings.database_url),
            study=study,
            indexer=Indexer(study),
            verifier=TokenVerifier(settings),
            derived_hooks=[recompute] + [hook for hook in [participation_hook(study)] if hook is not None],
            write_guards=guards,
            randomisation=randomisation,
            safety=load_safety(settings.study_dir, study),
            endpoints=endpoints,
        )
        # last: the endpoints read the death date the subject status hook gives the Patient, and every fact
        runtime.derived_hooks += [hook for hook in [endpoints_hook(study, endpoints)] if hook is not None]
        # first: the entries EHR pushes land as are data the other derived state (eligibility) may read
        runtime.derived_hooks.insert(0, ehr_entries_hook(study, runtime.after_entry_save))
        return runtime

    def after_entry_save(self, store: Any, instance: Any, values: dict[str, Any]) -> None:
        """A form or entry saved, or an EHR push landed as a log entry: a serious adverse event starts its
        reporting clock in the same transaction."""
        if self.safety is not None:
            safety.after_entry_save(self.safety, store, instance, values, self.now())

    def now(self) -> datetime:
        return self.clock()

    def eligibility(self, store: Any, patient_id: str) -> dict[str, Any]:
        """The randomisation gate of the eCRF door (a method, so a test may shadow it on the instance)."""
        return randomisation_basis(self.study, store, patient_id)
