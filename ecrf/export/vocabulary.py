"""What values a de-identified export may carry, from the study (forms/) and the profile: the study's own
codes, its code systems, its units and its arms. Everything else in a coded or unit element is dropped."""

from dataclasses import dataclass
from study_model.definitions import StudyDef


@dataclass(frozen=True)
class Vocabulary:
    systems: frozenset[str] = frozenset()  # code systems whose codes leave as they are (standard terminologies)
    codes: frozenset[tuple[str, str]] = frozenset()  # (system, code) of the study's own codes, local ones included
    units: frozenset[str] = frozenset()  # units the study declares (canonical, accepted and legacy spellings)
    arms: frozenset[str] = frozenset()  # the study's arm ids (ResearchSubject.assignedArm, ResearchStudy.arm.name)


def of_study(study: StudyDef, standard_systems: list[str] | tuple[str, ...] = ()) -> Vocabulary:
    systems = {system for system in study.code_systems.values() if system != study.local_system}
    systems.update(standard_systems)
    systems.discard(study.local_system)
    codes: set[tuple[str, str]] = set()
    units: set[str] = set()
    for form in study.forms:
        for item in form.items:
            if item.unit:
                units.add(item.unit)
            units.update(item.accepted_units)
            units.update(item.legacy_units)
            target = getattr(item, "fhir", None)
            if target is None:
                continue
            for coding in (*target.codes, *target.code_by_value.values()):
                codes.add((coding.system, coding.code))
            for value in item.values or ():
                coding = study.value_coding(item, value)
                codes.add((coding.system, coding.code))
    return Vocabulary(
        systems=frozenset(systems),
        codes=frozenset(codes),
        units=frozenset(units),
        arms=frozenset(arm.id for arm in study.arms),
    )
