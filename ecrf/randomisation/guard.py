"""No API changes an allocation (CRF-SPEC 6, "no undo"): a store write guard on allocated ResearchSubjects.

Whichever door writes a ResearchSubject that has an allocation, the version written must still carry the
allocated arm as `assignedArm` and the randomisation number as its identifier, and it may not be deleted;
otherwise the write is refused (409) and nothing is written. Other changes (a period, a status) go through.
"""

from collections.abc import Callable

from sqlmodel import select

from ecrf.randomisation.models import RandomisationAllocation
from ecrf.common.errors import Conflict
from ecrf.store.models import ResourceHead
from ecrf.store.service import ClinicalStore, WriteContext, WriteGuard


ALLOCATING = "ecrf.randomisation.allocating"  # session.info: subjects whose allocation this transaction writes


class AllocationKept(Conflict):
    pass


def allocation_guard(study_id: str, identifier_system: str) -> WriteGuard:
    def guard(
        store: ClinicalStore, resource_type: str, resource_id: str, context: WriteContext
    ) -> Callable[[], None] | None:
        if resource_type != "ResearchSubject" or resource_id in store.session.info.get(ALLOCATING, ()):
            return None  # the allocation's own writes (form, then ResearchSubject) are checked by it
        allocation = store.session.exec(
            select(RandomisationAllocation).where(
                RandomisationAllocation.study_id == study_id, RandomisationAllocation.subject_id == resource_id
            )
        ).one_or_none()
        if allocation is None:
            return None
        return lambda: _still_allocated(store, allocation, identifier_system)

    return guard


def _still_allocated(store: ClinicalStore, allocation: RandomisationAllocation, identifier_system: str) -> None:
    reference = f"ResearchSubject/{allocation.subject_id}"
    head = store.session.get(ResourceHead, ("ResearchSubject", allocation.subject_id))
    if head is None or head.deleted:
        raise AllocationKept(
            f"{reference} is randomised ({allocation.number}): it cannot be deleted; a "
            "mis-randomisation is recorded as a note and the subject stays as allocated",
            location=reference,
        )
    content = store.read("ResearchSubject", allocation.subject_id).content
    numbers = {i.get("value") for i in content.get("identifier") or [] if i.get("system") == identifier_system}
    if content.get("assignedArm") != allocation.arm or allocation.number not in numbers:
        raise AllocationKept(
            f"{reference} is randomised ({allocation.number}, arm {allocation.arm}): its "
            "assignedArm and randomisation number are the system's allocation and never change; "
            "nothing was written",
            location=reference,
        )
