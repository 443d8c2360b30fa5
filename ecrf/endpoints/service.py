"""Derived endpoints (CRF-SPEC 8): recurrence-free survival (rfs) and overall survival (os) of every randomised
subject, recomputed from the store in the transaction of every write that touches the subject (the derived
hook), whichever door wrote, and kept per subject in `endpoint_state`.

What counts as evidence is study data (`endpoints.yaml`, ecrf/endpoints/rules.py). The facts are the store's
item facts of current resource versions (so a withdrawn entry, whose resources are deleted, never counts),
the EHR's recurrence Conditions (not refuted or entered in error) and Patient.deceasedDateTime. Days count
from the randomisation date (day 0). Conflicts (two death dates that differ, a recurrence after death) are
reported on the endpoint, the earliest date is used, and a data query is suggested. A death recorded without a
date (Patient.deceasedBoolean true) while no dated death exists is a conflict of both endpoints and an open
item; they stay censored until a date is recorded.
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy import Date, and_, bindparam, exists, not_, or_
from sqlmodel import Session, select

from ecrf.audit import service as audit
from ecrf.common.dates import date_of
from ecrf.common.errors import NotFound
from ecrf.crf.models import FormInstance
from ecrf.crf.service import WITHDRAWN
from ecrf.eligibility.patient_data import CHUNK, Value, load
from ecrf.endpoints.models import EndpointState
from ecrf.endpoints.rules import EndpointRules
from ecrf.randomisation.models import RandomisationAllocation
from ecrf.store.models import ItemFact, ResourceHead, ResourceVersion, SearchToken
from ecrf.store.service import ClinicalStore
from ecrf.subjects.service import resolve, study_reference
from study_model.definitions import StudyDef
from fhir_mappings.fhir_constants import VOID_STATUSES

QUERY = "raise a data query to settle which is right"


@dataclass(frozen=True)
class Dated:
    """A date and the resource version that carries it."""

    day: date
    resource_type: str
    resource_id: str
    version: int
    item: str | None = None

    def evidence(self) -> dict[str, Any]:
        if self.resource_type == "FormInstance":  # a visit's date: the form instance, not a FHIR resource
            return {"form_instance": self.resource_id, "item": "visit_date", "date": self.day.isoformat()}
        found = {
            "resourceType": self.resource_type,
            "id": self.resource_id,
            "version": self.version,
            "date": self.day.isoformat(),
        }
        if self.item:
            found["item"] = self.item
        return found


def endpoints_hook(study: StudyDef, rules: EndpointRules | None) -> Callable[[ClinicalStore, set[str]], None] | None:
    if rules is None:
        return None

    def recompute(store: ClinicalStore, patient_ids: set[str]) -> None:
        _recompute(store, study, rules, patient_ids)

    return recompute


@dataclass(frozen=True)
class Origin:
    """A randomised subject and its day 0: the system's allocation, or a version-1 one (the arm typed in)."""

    subject_id: str
    patient_id: str
    site: str | None
    arm: str
    stratum: str
    randomisation_date: date
    method: str  # system, entered


def origins(
    session: Session, study: StudyDef, rules: EndpointRules, patient_ids: list[str], subject_id: str | None = None
) -> list[Origin]:
    """The randomised subjects of these patients (or that one subject): the system's allocations, and for the
    others a ResearchSubject of the study with an `assignedArm` (version 1) dated by the rules' date item."""
    found: list[Origin] = []
    for start in range(0, len(patient_ids), CHUNK):
        query = select(RandomisationAllocation).where(
            RandomisationAllocation.study_id == study.id,
            RandomisationAllocation.patient_id.in_(patient_ids[start : start + CHUNK]),
        )
        if subject_id is not None:
            query = query.where(RandomisationAllocation.subject_id == subject_id)
        found += [
            Origin(a.subject_id, a.patient_id, a.site, a.arm, a.stratum, a.randomisation_date, "system")
            for a in session.exec(query).all()
        ]
    if rules.entered_date is None:
        return found
    form, item = rules.entered_date
    allocated = {o.patient_id for o in found}
    dated: dict[str, date] = {}
    rest = sorted(set(patient_ids) - allocated)
    for start in range(0, len(rest), CHUNK):
        for patient_id, text in session.exec(
            select(ItemFact.patient_id, ItemFact.value_text).where(
                ItemFact.patient_id.in_(rest[start : start + CHUNK]),
                ItemFact.form_id == form,
                ItemFact.item_id == item,
                ItemFact.error.is_(None),
            )
        ):
            day = date_of(text)
            if day is not None and (patient_id not in dated or day > dated[patient_id]):
                dated[patient_id] = day  # the latest value, as the randomisation's own view reads it
    if not dated:
        return found
    reference = study_reference(study)
    rows = session.exec(
        select(ResourceHead.resource_id, ResourceHead.patient_id, ResourceHead.site, ResourceVersion.content)
        .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
        .where(
            ResourceHead.resource_type == "ResearchSubject",
            ResourceHead.deleted == False,  # noqa: E712
            ResourceHead.patient_id.in_(sorted(dated)),
        )
    ).all()
    for resource_id, patient_id, site, content in rows:
        subject = orjson.loads(content)
        if (
            (subject.get("study") or {}).get("reference") == reference
            and subject.get("assignedArm")
            and (subject_id is None or resource_id == subject_id)
        ):
            found.append(
                Origin(resource_id, patient_id, site, subject["assignedArm"], "", dated[patient_id], "entered")
            )
    return found


def _recompute(store: ClinicalStore, study: StudyDef, rules: EndpointRules, patient_ids: set[str]) -> None:
    if not patient_ids:
        return
    session = store.session
    touched = sorted(patient_ids)
    allocations = origins(session, study, rules, touched)
    states: dict[str, EndpointState] = {}
    for start in range(0, len(touched), CHUNK):  # locked, so writers of one subject take turns (PostgreSQL)
        states |= {
            s.subject_id: s
            for s in session.exec(
                select(EndpointState)
                .where(EndpointState.patient_id.in_(touched[start : start + CHUNK]))
                .order_by(EndpointState.subject_id)
                .with_for_update()
            ).all()
        }
    randomised = {a.subject_id for a in allocations}
    for subject_id in sorted(set(states) - randomised):  # a version-1 arm taken back: no endpoints any more
        session.delete(states.pop(subject_id))
    if not allocations:
        session.flush()
        return
    facts = compute_all(session, study, rules, allocations)
    now = datetime.now(UTC)
    entries: list[dict[str, Any]] = []
    for allocation in allocations:
        result = facts[allocation.subject_id]
        state = states.get(allocation.subject_id)
        text = orjson.dumps(result).decode()
        if state is not None and state.result == text:
            continue
        old = (state.rfs_event, state.rfs_days, state.os_event, state.os_days) if state is not None else None
        if state is None:
            state = EndpointState(
                subject_id=allocation.subject_id,
                patient_id=allocation.patient_id,
                site=allocation.site,
                arm=allocation.arm,
                stratum=allocation.stratum,
                randomisation_date=allocation.randomisation_date,
                rfs_event=False,
                rfs_days=0,
                os_event=False,
                os_days=0,
                result="{}",
                computed_at=now,
            )
        state.site, state.arm, state.stratum = allocation.site, allocation.arm, allocation.stratum
        state.randomisation_date = allocation.randomisation_date
        state.rfs_event, state.rfs_days = result["rfs"]["event"], result["rfs"]["days"]
        state.os_event, state.os_days = result["os"]["event"], result["os"]["days"]
        state.result, state.computed_at = text, now
        session.add(state)
        new = (state.rfs_event, state.rfs_days, state.os_event, state.os_days)
        if old != new:
            entries.append(
                {
                    "action": "endpoints.recomputed",
                    "source": "system",
                    "patient_id": allocation.patient_id,
                    "resource": f"ResearchSubject/{allocation.subject_id}",
                    "old_value": _summary(old),
                    "new_value": _summary(new),
                }
            )
    session.flush()
    if entries:
        audit.append_many(session, store.actor, entries)


def _summary(values: tuple | None) -> str | None:
    if values is None:
        return None
    rfs_event, rfs_days, os_event, os_days = values
    return (
        f"rfs {'event' if rfs_event else 'censored'} day {rfs_days}; "
        f"os {'event' if os_event else 'censored'} day {os_days}"
    )


# -- the computation ---------------------------------------------------------------------------------


def needed_items(study: StudyDef, rules: EndpointRules) -> frozenset[str]:
    """The items whose facts the endpoints read: every date item (alive evidence, recurrence, death, onsets) and
    the statuses and grades the rules name; the other facts (lab values...) count through their dates only."""
    dates = {item.id for form in study.forms for item in form.items if item.type == "date"}
    return frozenset(dates | {rules.assessment_status, rules.end_status, rules.ae_grade})


def compute_all(
    session: Session, study: StudyDef, rules: EndpointRules, allocations: list[Origin]
) -> dict[str, dict[str, Any]]:
    """subject id -> its endpoints view, from the store as this session sees it."""
    patients = sorted({a.patient_id for a in allocations})
    data = load(session, study, patients, items=needed_items(study, rules), conditions=False)
    _drop_unfinished(session, rules, data.values())
    recurrences = _recurrence_conditions(session, rules, patients) if rules.recurrence_codings else {}
    deceased, undated = _deceased(session, patients) if rules.patient_deceased else ({}, {})
    views = {}
    for allocation in allocations:
        values = data[allocation.patient_id].values
        end = _end_date(rules, values)
        alive = _alive_dates(rules, values) + _dated_elsewhere(
            session, rules, allocation.patient_id, end.value if end is not None else None
        )
        views[allocation.subject_id] = compute(
            rules,
            allocation,
            values,
            recurrences.get(allocation.patient_id, []),
            deceased.get(allocation.patient_id),
            alive,
            end,
            undated.get(allocation.patient_id) if rules.deceased_without_date else None,
        )
    return views


def _drop_unfinished(session: Session, rules: EndpointRules, patients: Any) -> None:
    """Leave out the values of Observations whose status is not evidence (CRF-SPEC 9.3: preliminary...)."""
    observations = sorted(
        {
            v.resource_id
            for p in patients
            for values in p.values.values()
            for v in values
            if v.resource_type == "Observation"
        }
    )
    unfinished = set()
    for start in range(0, len(observations), CHUNK):
        unfinished |= set(
            session.exec(
                select(SearchToken.resource_id).where(
                    SearchToken.resource_type == "Observation",
                    SearchToken.param == "status",
                    SearchToken.resource_id.in_(observations[start : start + CHUNK]),
                    SearchToken.code.not_in(sorted(rules.observation_statuses)),
                )
            ).all()
        )
    if not unfinished:
        return
    for patient in patients:
        for item, values in patient.values.items():
            patient.values[item] = [
                v for v in values if not (v.resource_type == "Observation" and v.resource_id in unfinished)
            ]


@cache
def _elsewhere_statements(rules: EndpointRules) -> tuple[Any, Any, Any, Any]:
    """The four statements of `_dated_elsewhere`, built once per rules (binding `patient` and `end`)."""
    patient, end = bindparam("patient"), bindparam("end", type_=Date)
    excluded = [and_(ItemFact.form_id == form, ItemFact.item_id == item) for form, item in sorted(rules.not_alive)]
    unfinished = exists().where(  # CRF-SPEC 9.3: a preliminary result is no evidence (probed per fact, by id)
        SearchToken.resource_type == ItemFact.resource_type,
        SearchToken.resource_id == ItemFact.resource_id,
        ItemFact.resource_type == "Observation",
        SearchToken.param == "status",
        SearchToken.code.not_in(sorted(rules.observation_statuses)),
    )
    facts = select(
        ItemFact.resource_type, ItemFact.resource_id, ItemFact.version_id, ItemFact.item_id, ItemFact.effective_date
    ).where(
        ItemFact.patient_id == patient,
        ItemFact.effective_date.is_not(None),
        *[not_(e) for e in excluded],
        not_(unfinished),
    )
    visits = select(FormInstance.id, FormInstance.visit_date).where(
        FormInstance.patient_id == patient, FormInstance.status != WITHDRAWN, FormInstance.form_id != rules.end_form
    )
    return (
        facts.order_by(ItemFact.effective_date.desc()).limit(1),
        facts.where(ItemFact.effective_date > end),
        visits.order_by(FormInstance.visit_date.desc()).limit(1),
        visits.where(FormInstance.visit_date > end),
    )


def _dated_elsewhere(session: Session, rules: EndpointRules, patient_id: str, end: date | None) -> list[Dated]:
    """Alive evidence beyond the date items: the latest date of any fact (a lab's, a visit form's own date) and
    the latest visit date of a live form instance (not the end of study's, whose date closes the record); and
    when the subject has an end-of-study date, every one after it (the open item lists them)."""
    latest_fact, later_facts, latest_visit, later_visits = _elsewhere_statements(rules)
    rows = list(session.execute(latest_fact, {"patient": patient_id}).all())
    instances = list(session.execute(latest_visit, {"patient": patient_id}).all())
    if end is not None:
        rows += session.execute(later_facts, {"patient": patient_id, "end": end}).all()
        instances += session.execute(later_visits, {"patient": patient_id, "end": end}).all()
    found = {
        Dated(day, resource_type, resource_id, version, item) for resource_type, resource_id, version, item, day in rows
    }
    found |= {Dated(day, "FormInstance", instance_id, 0, "visit_date") for instance_id, day in instances}
    return sorted(found, key=_order)


def _recurrence_conditions(session: Session, rules: EndpointRules, patients: list[str]) -> dict[str, list[Dated]]:
    """The patients' Conditions coded as a recurrence, at their onsetDateTime; not when refuted or entered in
    error (CRF-SPEC 9.3: a resolved or inactive one still counts)."""
    coded = select(SearchToken.resource_id).where(
        SearchToken.resource_type == "Condition",
        SearchToken.param == "code",
        or_(
            *[
                and_(SearchToken.system == system, SearchToken.code == code)
                for system, code in sorted(rules.recurrence_codings)
            ]
        ),
    )
    found: dict[str, list[Dated]] = defaultdict(list)
    for start in range(0, len(patients), CHUNK):
        rows = session.exec(
            select(
                ResourceHead.patient_id,
                ResourceVersion.resource_id,
                ResourceVersion.version_id,
                ResourceVersion.content,
            )
            .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
            .where(
                ResourceHead.resource_type == "Condition",
                ResourceHead.deleted == False,  # noqa: E712
                ResourceHead.patient_id.in_(patients[start : start + CHUNK]),
                ResourceHead.resource_id.in_(coded),
            )
        ).all()
        for patient_id, resource_id, version, content in rows:
            condition = orjson.loads(content)
            verification = {c.get("code") for c in (condition.get("verificationStatus") or {}).get("coding") or []}
            day = date_of(condition.get("onsetDateTime") or (condition.get("onsetPeriod") or {}).get("start"))
            if day is None or verification & VOID_STATUSES:
                continue
            found[patient_id].append(Dated(day, "Condition", resource_id, version, "onsetDateTime"))
    return found


def _end_date(rules: EndpointRules, values: dict[str, list[Value]]) -> Value | None:
    ends = [v for v in values.get(rules.end_date, []) if v.form == rules.end_form and isinstance(v.value, date)]
    return max(ends, key=lambda v: v.value) if ends else None


def _deceased(session: Session, patients: list[str]) -> tuple[dict[str, Dated], dict[str, dict[str, Any]]]:
    """Patient.deceasedDateTime as evidence of its own: only when a source other than the system's derivation
    from the end-of-study form set it (the form's copy is the form's death date, and goes with the form). And
    the Patients whose deceasedBoolean is true (death evidence without a date): their evidence, the version
    that set it."""
    found: dict[str, Dated] = {}
    undated: dict[str, dict[str, Any]] = {}
    for start in range(0, len(patients), CHUNK):
        rows = session.exec(
            select(ResourceHead.resource_id, ResourceVersion.version_id, ResourceVersion.content)
            .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
            .where(
                ResourceHead.resource_type == "Patient",
                ResourceHead.deleted == False,  # noqa: E712
                ResourceHead.resource_id.in_(patients[start : start + CHUNK]),
            )
        ).all()
        for patient_id, version, content in rows:
            if b"deceased" not in (content.encode() if isinstance(content, str) else content):
                continue
            patient = orjson.loads(content)
            if patient.get("deceasedBoolean") is True:
                origin = _set_by(session, patient_id, version, True, _flag) or version
                undated[patient_id] = {
                    "resourceType": "Patient",
                    "id": patient_id,
                    "version": origin,
                    "item": "deceasedBoolean",
                }
                continue
            day = date_of(patient.get("deceasedDateTime"))
            if day is None:
                continue
            origin = _set_by(session, patient_id, version, day)
            if origin is not None:
                found[patient_id] = Dated(day, "Patient", patient_id, origin, "deceasedDateTime")
    return found, undated


def _flag(patient: dict[str, Any]) -> Any:
    return patient.get("deceasedBoolean")


def _death_date(patient: dict[str, Any]) -> Any:
    return date_of(patient.get("deceasedDateTime"))


def _set_by(
    session: Session, patient_id: str, version: int, day: Any, read: Callable[[dict[str, Any]], Any] = _death_date
) -> int | None:
    """The version that wrote this death date (`read`: or another deceased[x] value; the oldest of the unbroken
    run of versions carrying it), or None when the system wrote it (the end-of-study form's death date, copied)."""
    rows = session.exec(
        select(ResourceVersion.version_id, ResourceVersion.source, ResourceVersion.content)
        .where(
            ResourceVersion.resource_type == "Patient",
            ResourceVersion.resource_id == patient_id,
            ResourceVersion.version_id <= version,
        )
        .order_by(ResourceVersion.version_id.desc())
    ).all()
    first = None
    for version_id, source, content in rows:
        if read(orjson.loads(content)) != day:
            break
        first = (version_id, source)
    if first is None or first[1] == "system":
        return None
    return first[0]


def _entries(values: dict[str, list[Value]], form: str) -> dict[tuple[str, str], dict[str, Value]]:
    """A form's values grouped by the resource that carries them (one entry each)."""
    entries: dict[tuple[str, str], dict[str, Value]] = defaultdict(dict)
    for item_values in values.values():
        for value in item_values:
            if value.form == form:
                entries[(value.resource_type, value.resource_id)][value.item] = value
    return entries


def _dated(value: Value, day: Any = None) -> Dated:
    return Dated(
        day if isinstance(day, date) else value.value,
        value.resource_type,
        value.resource_id,
        value.version_id,
        value.item,
    )


def compute(
    rules: EndpointRules,
    allocation: Origin,
    values: dict[str, list[Value]],
    conditions: list[Dated],
    deceased: Dated | None,
    alive: list[Dated],
    end: Value | None,
    undated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    origin = allocation.randomisation_date
    assessments = _entries(values, rules.assessment_form)
    recurrences: list[Dated] = []
    no_evidence: list[Dated] = []
    for entry in assessments.values():
        status = entry.get(rules.assessment_status)
        if status is None:
            continue
        if status.value in rules.recurrence_values and rules.recurrence_date in entry:
            recurrences.append(_dated(entry[rules.recurrence_date]))
        elif status.value in rules.no_evidence_values and rules.assessment_date in entry:
            no_evidence.append(_dated(entry[rules.assessment_date]))
    # a recurrence Condition that landed as a disease assessment entry (its items read from it) is one recurrence:
    # counted once, as the Condition (same resource, same onset date)
    condition_keys = {(c.resource_type, c.resource_id) for c in conditions}
    recurrences = [r for r in recurrences if (r.resource_type, r.resource_id) not in condition_keys] + conditions
    deaths = [
        _dated(value)
        for form, item in sorted(rules.death_items)
        for value in values.get(item, [])
        if value.form == form and isinstance(value.value, date)
    ]
    if deceased is not None:
        deaths.append(deceased)

    death_conflicts = []
    death = min(deaths, key=_order) if deaths else None
    if undated is not None and death is None:  # death recorded without a date, and no date anywhere
        death_conflicts.append(
            {
                "kind": "death_without_date",
                "message": rules.deceased_without_date,
                "evidence": [undated],
                "suggestion": QUERY,
            }
        )
    if len({d.day for d in deaths}) > 1:
        death_conflicts.append(
            {
                "kind": "death_dates_differ",
                "dates": sorted({d.day.isoformat() for d in deaths}),
                "evidence": [d.evidence() for d in sorted(deaths, key=_order)],
                "used": death.day.isoformat(),
                "suggestion": QUERY,
            }
        )

    def endpoint(event: Dated | None, censor: Dated | None, conflicts: list[dict[str, Any]]) -> dict[str, Any]:
        decided = event or censor
        day = decided.day if decided is not None else origin
        return {
            "event": event is not None,
            "days": (day - origin).days,
            "date": day.isoformat(),
            "evidence": decided.evidence() if decided is not None else {"randomisation_date": origin.isoformat()},
            "conflicts": conflicts,
        }

    rfs_conflicts = list(death_conflicts)
    if death is not None:
        late = sorted((r for r in recurrences if r.day > death.day), key=_order)
        if late:
            rfs_conflicts.append(
                {
                    "kind": "recurrence_after_death",
                    "death": death.evidence(),
                    "evidence": [r.evidence() for r in late],
                    "used": death.day.isoformat(),
                    "suggestion": QUERY,
                }
            )
    events = sorted(recurrences + ([death] if death is not None else []), key=_order)
    censor = max(no_evidence, key=_order) if no_evidence else None
    if censor is not None and censor.day < origin:
        censor = None  # an assessment before randomisation: censored at day 0
    rfs = endpoint(events[0] if events else None, censor, rfs_conflicts)

    last_alive = max(alive, key=_order) if alive else None
    if last_alive is not None and last_alive.day < origin:
        last_alive = None
    os = endpoint(death, None if death is not None else last_alive, list(death_conflicts))
    return {
        "subject": allocation.subject_id,
        "randomised": True,
        "arm": allocation.arm,
        "stratum": allocation.stratum or None,
        "randomisation_date": origin.isoformat(),
        "randomisation_method": allocation.method,
        "rfs": rfs,
        "os": os,
        "open_items": _open_items(rules, values, alive, end)
        + (
            [{"kind": "death_without_date", "message": rules.deceased_without_date, "evidence": undated}]
            if undated is not None and death is None
            else []
        ),
    }


def _order(dated: Dated) -> tuple:
    return (dated.day, dated.resource_type, dated.resource_id, dated.version)


def _alive_dates(rules: EndpointRules, values: dict[str, list[Value]]) -> list[Dated]:
    """Every date of the subject's data but the death dates: the form's own date of each fact, and every date item."""
    found = []
    for item_values in values.values():
        for value in item_values:
            if (value.form, value.item) in rules.not_alive:
                continue
            if isinstance(value.value, date):
                found.append(_dated(value))
            elif value.day is not None:
                found.append(_dated(value, value.day))
    return found


def _open_items(
    rules: EndpointRules, values: dict[str, list[Value]], alive: list[Dated], end: Value | None
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    ends = _entries(values, rules.end_form)
    died = [
        entry
        for entry in ends.values()
        if (entry.get(rules.end_status) and entry[rules.end_status].value in rules.died_values)
    ]
    death_days = [
        v.value
        for form, item in rules.death_items
        for v in values.get(item, [])
        if v.form == form and isinstance(v.value, date)
    ]
    for entry in _entries(values, rules.ae_form).values():
        grade, onset = entry.get(rules.ae_grade), entry.get(rules.ae_onset)
        if grade is None or grade.value not in rules.fatal_grades:
            continue
        onset_day = onset.value if onset is not None and isinstance(onset.value, date) else None
        if died and (onset_day is None or any(day >= onset_day for day in death_days)):
            continue
        items.append(
            {
                "kind": "fatal_adverse_event_without_death",
                "message": f"a grade {grade.value} adverse event needs an end of study 'died' on or after "
                f"its onset{f' ({onset_day.isoformat()})' if onset_day else ''}",
                "evidence": _dated(grade, onset_day or grade.day).evidence()
                if (onset_day or grade.day)
                else {"resourceType": grade.resource_type, "id": grade.resource_id, "version": grade.version_id},
            }
        )
    if end is not None:
        end_key = (end.resource_type, end.resource_id)
        after = sorted(
            {d for d in alive if d.day > end.value and (d.resource_type, d.resource_id) != end_key}, key=_order
        )
        if after:
            items.append(
                {
                    "kind": "data_after_end_of_study",
                    "message": f"{len(after)} date(s) after the end-of-study date {end.value.isoformat()} "
                    "(accepted; still evidence the subject was alive)",
                    "end_of_study": _dated(end).evidence(),
                    "evidence": [d.evidence() for d in after],
                }
            )
    return items


# -- reads -------------------------------------------------------------------------------------------


def subject_view(
    store: ClinicalStore, study: StudyDef, rules: EndpointRules | None, subject_id: str
) -> tuple[dict[str, Any], str]:
    """(the subject's endpoints as of the latest write, its patient id). A subject not randomised answers
    `randomised: false` with null endpoints and the reason."""
    subject = resolve(store, study, subject_id)
    if rules is None:
        raise NotFound(f"study {study.id} defines no derived endpoints")
    state = store.session.get(EndpointState, subject.id)
    if state is not None:
        view = orjson.loads(state.result)
        return {**view, "computed_at": _iso(state.computed_at)}, subject.patient_id
    found = origins(store.session, study, rules, [subject.patient_id], subject.id)
    if not found:
        return {
            "subject": subject.id,
            "randomised": False,
            "rfs": None,
            "os": None,
            "open_items": [],
            "reason": "the subject is not randomised: endpoints count from the randomisation date",
        }, subject.patient_id
    view = compute_all(store.session, study, rules, found)[subject.id]  # randomised before the endpoints
    return {**view, "computed_at": None}, subject.patient_id


def _iso(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
