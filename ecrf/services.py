"""The running service as the domains and doors see it: a protocol, so no module below the app imports
ecrf.runtime (ecrf.runtime.Runtime is the one implementation; tests may pass their own)."""

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from ecrf.config import Settings
from ecrf.store.wiring import StoreWiring
from study_model.definitions import StudyDef


class Services(StoreWiring, Protocol):
    settings: Settings
    study: StudyDef
    randomisation: Any  # the study's randomisation scheme (ecrf/randomisation/scheme.py), None: off
    safety: Any  # the study's SAE reporting clock (ecrf/safety/scheme.py), None: off
    endpoints: Any  # the evidence of the derived endpoints (ecrf/endpoints/rules.py), None: no endpoints
    clock: Callable[[], datetime]

    def now(self) -> datetime: ...

    def eligibility(self, store: Any, patient_id: str) -> dict[str, Any]: ...

    def after_entry_save(self, store: Any, instance: Any, values: dict[str, Any]) -> None:
        """A form or entry was saved (through the eCRF door) or landed (an EHR's push), in the write's
        transaction: what other domains do then (the SAE reporting clock), so crf depends on none of them."""
