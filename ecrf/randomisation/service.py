"""Generation and verification of the allocation lists, and the allocation itself (CRF-SPEC version 2, section 6).

Concealment: the slots are read here, by number, only (a) to allocate the next one inside the allocating
transaction and (b) for the randomisation manager's views; no other function returns an unused slot, no error
message names one, and neither the audit trail nor any log receives a list's contents.
"""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ecrf.audit import service as audit
from ecrf.auth.actor import SYSTEM, Actor
from ecrf.config import Settings, secret_in_file
from ecrf.common.errors import Blocked, Conflict, NotFound
from ecrf.db import transaction
from ecrf.eligibility.patient_data import load
from ecrf.randomisation import lists
from ecrf.randomisation.guard import ALLOCATING
from ecrf.randomisation.models import (
    RandomisationAllocation,
    RandomisationCounter,
    RandomisationList,
    RandomisationSlot,
)
from ecrf.randomisation.scheme import Scheme, SchemeError
from ecrf.store.service import ClinicalStore, WriteContext
from ecrf.subjects.service import Subject, resolve
from study_model.definitions import StudyDef

METHOD_SYSTEM, METHOD_ENTERED = "system", "entered"


class ListsMissing(Exception):
    """The stratum has no list yet: generate (once), then allocate again."""


class AlreadyAllocated(Exception):
    """A concurrent request allocated this subject first: answer that allocation (200)."""


# -- the secret --------------------------------------------------------------------------------------


def randomisation_secret(settings: Settings) -> bytes:
    """ECRF_RANDOMISATION_SECRET, else a random secret generated once into a 0600 file; never the study or
    JWT secret (a sponsor or token issuer must not be able to regenerate the lists)."""
    if settings.randomisation_secret:
        if settings.randomisation_secret in (settings.study_secret, settings.jwt_secret):
            raise SchemeError("ECRF_RANDOMISATION_SECRET must differ from ECRF_STUDY_SECRET and ECRF_JWT_SECRET")
        return settings.randomisation_secret.encode()
    return secret_in_file(settings.randomisation_secret_file)


# -- generation and verification -------------------------------------------------------------------


def _lists(session: Session, study_id: str) -> dict[str, RandomisationList]:
    rows = session.exec(select(RandomisationList).where(RandomisationList.study_id == study_id)).all()
    return {row.stratum: row for row in rows}


def _check_fingerprint(scheme: Scheme, existing: dict[str, RandomisationList]) -> None:
    changed = sorted(s for s, row in existing.items() if row.scheme_fingerprint != scheme.fingerprint)
    if changed:
        raise SchemeError(
            f"randomisation.yaml changed after the lists of {', '.join(changed)} were generated; "
            "lists are never regenerated: restore the file the lists were generated from"
        )


def generate(engine: Engine, settings: Settings, study: StudyDef, scheme: Scheme, actor: Actor = SYSTEM) -> list[str]:
    """Generate the lists of the strata that have none (once per study: existing lists are never touched).
    Answers the strata generated now; an instance that loses a concurrent generation answers []."""
    try:
        with transaction(engine) as session:
            existing = _lists(session, study.id)
            _check_fingerprint(scheme, existing)
            missing = [stratum for stratum in scheme.strata if stratum not in existing]
            counters = set(
                session.exec(select(RandomisationCounter.name).where(RandomisationCounter.study_id == study.id)).all()
            )
            if not missing and all(f"site:{site.id}" in counters for site in study.sites):
                return []
            secret = randomisation_secret(settings)
            now = datetime.now(UTC)
            sizes = []
            for stratum in missing:
                slots = lists.generate(secret, study.id, scheme, stratum)
                session.add(
                    RandomisationList(
                        study_id=study.id,
                        stratum=stratum,
                        slots=len(slots),
                        checksum=lists.checksum(study.id, stratum, slots),
                        scheme_fingerprint=scheme.fingerprint,
                        generated_at=now,
                        generated_by=actor.sub,
                    )
                )
                session.add_all(
                    [
                        RandomisationSlot(
                            study_id=study.id,
                            stratum=stratum,
                            sequence=slot.sequence,
                            block=slot.block,
                            block_size=slot.block_size,
                            arm=slot.arm,
                        )
                        for slot in slots
                    ]
                )
                session.add(RandomisationCounter(study_id=study.id, name=f"stratum:{stratum}", value=0))
                sizes.append(f"{stratum}: {len(slots)} slots")
            for site in study.sites:
                if f"site:{site.id}" not in counters:
                    session.add(RandomisationCounter(study_id=study.id, name=f"site:{site.id}", value=0))
            session.flush()
            if missing:  # the list's size, never its contents or checksum input
                audit.append(
                    session,
                    actor,
                    "randomisation.generate",
                    source="system",
                    resource=f"ResearchStudy/{study.id}",
                    new_value=f"{len(missing)} list(s)",
                    reason="; ".join(sizes),
                )
            return missing
    except IntegrityError:
        return []


@dataclass(frozen=True)
class Problem:
    stratum: str
    problem: str


def verify(engine: Engine, settings: Settings, study: StudyDef, scheme: Scheme, actor: Actor = SYSTEM) -> list[Problem]:
    """Regenerate every list from the secret and compare: with the checksum recorded at generation, with
    the slots stored, and every allocation with the slot it took. The outcome is audited (not the lists)."""
    secret = randomisation_secret(settings)
    problems: list[Problem] = []
    with transaction(engine) as session:
        existing = _lists(session, study.id)
        for stratum in scheme.strata:
            row = existing.get(stratum)
            if row is None:
                problems.append(Problem(stratum, "no list has been generated"))
                continue
            if row.scheme_fingerprint != scheme.fingerprint:
                problems.append(Problem(stratum, "generated from another randomisation.yaml"))
            expected = lists.generate(secret, study.id, scheme, stratum)
            if lists.checksum(study.id, stratum, expected) != row.checksum:
                problems.append(
                    Problem(
                        stratum,
                        "the recorded checksum is not the regenerated list's "
                        "(another secret, or the checksum was altered)",
                    )
                )
            stored = [
                lists.Slot(s.sequence, s.block, s.block_size, s.arm)
                for s in session.exec(
                    select(RandomisationSlot)
                    .where(RandomisationSlot.study_id == study.id, RandomisationSlot.stratum == stratum)
                    .order_by(RandomisationSlot.sequence)
                ).all()
            ]
            if lists.checksum(study.id, stratum, stored) != row.checksum or len(stored) != row.slots:
                problems.append(Problem(stratum, "the stored slots differ from the list as generated"))
            by_sequence = {slot.sequence: slot.arm for slot in expected}
            for allocation in session.exec(
                select(RandomisationAllocation).where(
                    RandomisationAllocation.study_id == study.id, RandomisationAllocation.stratum == stratum
                )
            ).all():
                if by_sequence.get(allocation.sequence) != allocation.arm:
                    problems.append(
                        Problem(
                            stratum,
                            f"allocation {allocation.number} does not hold the arm of slot {allocation.sequence}",
                        )
                    )
        for stratum in sorted(set(existing) - set(scheme.strata)):
            problems.append(Problem(stratum, "a list of a stratum the scheme does not have"))
        audit.append(
            session,
            actor,
            "randomisation.verify",
            source="system",
            resource=f"ResearchStudy/{study.id}",
            new_value="intact" if not problems else f"{len(problems)} problem(s)",
            reason="; ".join(f"{p.stratum}: {p.problem}" for p in problems) or None,
        )
    return problems


# -- allocation -------------------------------------------------------------------------------------


def scheme_of(runtime: Any) -> Scheme:
    scheme = getattr(runtime, "randomisation", None)
    if scheme is None:
        raise NotFound(f"study {runtime.study.id} is not randomised by the system (no randomisation.yaml)")
    return scheme


def stratum_of(study: StudyDef, scheme: Scheme, store: ClinicalStore, subject: Subject) -> str:
    """The subject's stratum, from its data (the site; the latest value of each item factor, grouped)."""
    data = load(store.session, study, [subject.patient_id])[subject.patient_id]
    parts, problems = [], []
    for factor in scheme.factors:
        if factor.item is None:
            parts.append(subject.site or "")
            continue
        values = data.of(factor.item)
        group = factor.group_of(values[-1].value) if values else None
        if group is None:
            found = f"latest value {values[-1].value}" if values else "no value"
            accepted = ", ".join(f"{group} ({'/'.join(values)})" for group, values in factor.groups.items())
            problems.append(
                {
                    "item": factor.item,
                    "rule": "stratum",
                    "message": f"the stratum needs {factor.item} in one of {accepted}: {found}",
                }
            )
        else:
            parts.append(group)
    if problems:
        raise Blocked("the subject's stratum cannot be derived from its data", problems)
    return "-".join(parts) if scheme.factors else "all"


def _allocation_of(session: Session, study_id: str, subject_id: str) -> RandomisationAllocation | None:
    return session.exec(
        select(RandomisationAllocation).where(
            RandomisationAllocation.study_id == study_id, RandomisationAllocation.subject_id == subject_id
        )
    ).one_or_none()


def _next(session: Session, study_id: str, name: str) -> int | None:
    """Add one to a counter and answer it. The UPDATE holds the row's lock until commit (PostgreSQL), so
    concurrent allocations of a stratum take turns; SQLite writers are serial anyway."""
    return session.execute(
        update(RandomisationCounter)
        .where(RandomisationCounter.study_id == study_id, RandomisationCounter.name == name)
        .values(value=RandomisationCounter.value + 1)
        .returning(RandomisationCounter.value)
    ).scalar_one_or_none()


def allocation_view(row: RandomisationAllocation) -> dict[str, Any]:
    return {
        "subject_id": row.subject_id,
        "randomised": True,
        "method": METHOD_SYSTEM,
        "arm": row.arm,
        "randomisation_number": row.number,
        "randomisation_date": row.randomisation_date.isoformat(),
        "stratum": row.stratum,
        "allocated_at": row.allocated_at.isoformat(),
        "allocated_by": row.allocated_by,
    }


def _entered_view(study: StudyDef, scheme: Scheme, store: ClinicalStore, subject: Subject) -> dict[str, Any] | None:
    """A version-1 allocation (the arm typed into the form): kept as it is, `method: entered`."""
    arm = subject.research_subject.content.get("assignedArm")
    if not arm:
        return None
    data = load(store.session, study, [subject.patient_id])[subject.patient_id]
    dates = data.of(scheme.date_item)
    return {
        "subject_id": subject.id,
        "randomised": True,
        "method": METHOD_ENTERED,
        "arm": arm,
        "randomisation_number": None,
        "randomisation_date": str(dates[-1].value) if dates else None,
        "stratum": None,
    }


def read_allocation(runtime: Any, store: ClinicalStore, subject_id: str) -> dict[str, Any]:
    """The subject's own allocation (open label: visible to whoever may read the subject), never a list."""
    scheme = scheme_of(runtime)
    subject = resolve(store, runtime.study, subject_id)
    row = _allocation_of(store.session, runtime.study.id, subject.id)
    if row is not None:
        return allocation_view(row)
    return _entered_view(runtime.study, scheme, store, subject) or {"subject_id": subject.id, "randomised": False}


def randomise(runtime: Any, store: ClinicalStore, subject_id: str, *, source: str) -> tuple[dict[str, Any], bool]:
    """Allocate the subject the next slot of its stratum, in this transaction; (view, created). A subject
    already randomised gets its allocation again (created False) and nothing is written."""
    from ecrf.crf.gate import eligibility_gate
    from ecrf.crf.service import save_form

    study, scheme, session = runtime.study, scheme_of(runtime), store.session
    subject = resolve(store, study, subject_id)
    existing = _allocation_of(session, study.id, subject.id)
    if existing is not None:
        return allocation_view(existing), False
    entered = _entered_view(study, scheme, store, subject)
    if entered is not None:
        return entered, False
    if not (subject.research_subject.content.get("period") or {}).get("start"):
        raise Blocked(
            "randomisation needs consent on file",
            [{"item": "consent_date", "rule": "required", "message": "the subject has no consent date"}],
        )
    eligibility_gate(runtime, store, subject)  # 409 with the blocking criteria, R = the site's date
    stratum = stratum_of(study, scheme, store, subject)
    sequence = _next(session, study.id, f"stratum:{stratum}")
    if sequence is None:
        raise ListsMissing(stratum)
    if _allocation_of(session, study.id, subject.id) is not None:  # allocated while this one waited its turn
        raise AlreadyAllocated(subject.id)
    size = session.exec(
        select(RandomisationList.slots).where(
            RandomisationList.study_id == study.id, RandomisationList.stratum == stratum
        )
    ).one()
    if sequence > size:
        raise Conflict(
            f"the allocation list of stratum {stratum} is exhausted ({size} slots allocated); no allocation was made",
            location="stratum",
        )
    arm = session.get(RandomisationSlot, (study.id, stratum, sequence)).arm
    site_sequence = _next(session, study.id, f"site:{subject.site}")
    if site_sequence is None:
        raise ListsMissing(stratum)
    number = scheme.number_for(subject.site or "", site_sequence)
    today, now, actor = study.today_at(subject.site), datetime.now(UTC), store.actor
    session.add(
        RandomisationAllocation(
            study_id=study.id,
            stratum=stratum,
            sequence=sequence,
            subject_id=subject.id,
            patient_id=subject.patient_id,
            site=subject.site,
            number=number,
            arm=arm,
            randomisation_date=today,
            allocated_at=now,
            allocated_by=actor.sub,
            allocated_role=actor.role,
        )
    )
    try:
        session.flush()
    except IntegrityError as error:
        raise AlreadyAllocated(subject.id) from error
    reason = f"randomisation {number}"
    allocating = session.info.setdefault(ALLOCATING, set())
    allocating.add(subject.id)  # the guard that keeps allocations lets these writes make it
    try:
        save_form(
            runtime,
            store,
            subject.id,
            scheme.form,
            scheme.visit,
            items={scheme.arm_item: arm, scheme.date_item: today.isoformat()},
            visit_date=today,
            reason=None,
            if_match=None,
            allocated=True,
        )
        content = store.read("ResearchSubject", subject.id).content
        identifiers = [i for i in content.get("identifier") or [] if i.get("system") != scheme.identifier_system]
        store.update(
            "ResearchSubject",
            subject.id,
            {
                **content,
                "status": "on-study",
                "assignedArm": arm,
                "identifier": identifiers + [{"use": "official", "system": scheme.identifier_system, "value": number}],
            },
            WriteContext(source=source, reason=reason, form_id=scheme.form, visit_id=scheme.visit),
        )
    finally:
        allocating.discard(subject.id)
    audit.append(
        session,
        actor,
        "randomisation.allocate",
        source=source,
        patient_id=subject.patient_id,
        form_id=scheme.form,
        visit_id=scheme.visit,
        resource=f"ResearchSubject/{subject.id}",
        new_value=f"{number} {arm}",
        reason=f"stratum {stratum}, slot {sequence}",
    )
    return allocation_view(session.get(RandomisationAllocation, (study.id, stratum, sequence))), True


def randomise_with_retry(runtime: Any, actor: Actor, subject_id: str, *, source: str) -> tuple[dict[str, Any], bool]:
    """One allocation as its own unit of work: generates the lists first when they do not exist yet, and
    answers a concurrent request's allocation of the same subject as a repeat."""
    from ecrf.store.unit import read_only, writing

    for attempt in range(3):
        try:
            with writing(runtime, actor) as store:
                return randomise(runtime, store, subject_id, source=source)
        except ListsMissing:
            if attempt:
                raise
            generate(runtime.engine, runtime.settings, runtime.study, scheme_of(runtime))
        except AlreadyAllocated:
            with read_only(runtime, actor) as store:
                return read_allocation(runtime, store, subject_id), False
    raise Conflict("the allocation could not be made; try again")


def add_note(runtime: Any, store: ClinicalStore, subject_id: str, text: str) -> dict[str, Any]:
    """A mis-randomisation is recorded as a note in the audit trail (data manager); the subject stays as
    allocated (intention to treat): nothing else is written."""
    text = (text or "").strip()
    if not text:
        raise Blocked(
            "a note needs its text", [{"item": "text", "rule": "required", "message": "text must not be blank"}]
        )
    scheme = scheme_of(runtime)
    subject = resolve(store, runtime.study, subject_id)
    view = read_allocation(runtime, store, subject.id)
    if not view["randomised"]:
        raise Conflict(f"subject {subject.id} is not randomised: there is no allocation to annotate")
    now = datetime.now(UTC)
    audit.append(
        store.session,
        store.actor,
        "randomisation.note",
        source="form",
        patient_id=subject.patient_id,
        form_id=scheme.form,
        visit_id=scheme.visit,
        resource=f"ResearchSubject/{subject.id}",
        new_value=view.get("randomisation_number") or view["arm"],
        reason=text,
        at=now,
    )
    return {
        "subject_id": subject.id,
        "randomisation_number": view.get("randomisation_number"),
        "note": text,
        "at": now.isoformat(),
        "by": store.actor.sub,
    }


# -- the randomisation manager's views ----------------------------------------------------------------


def list_summaries(session: Session, study: StudyDef) -> list[dict[str, Any]]:
    used = dict(
        session.exec(
            select(RandomisationAllocation.stratum, func.count())
            .where(RandomisationAllocation.study_id == study.id)
            .group_by(RandomisationAllocation.stratum)
        ).all()
    )
    return [
        {
            "stratum": row.stratum,
            "slots": row.slots,
            "used": used.get(row.stratum, 0),
            "unused": row.slots - used.get(row.stratum, 0),
            "checksum": row.checksum,
            "scheme_fingerprint": row.scheme_fingerprint,
            "generated_at": row.generated_at.isoformat(),
            "generated_by": row.generated_by,
        }
        for row in sorted(_lists(session, study.id).values(), key=lambda r: r.stratum)
    ]


def list_slots(session: Session, study: StudyDef, stratum: str | None = None) -> list[dict[str, Any]]:
    query = select(RandomisationSlot).where(RandomisationSlot.study_id == study.id)
    if stratum is not None:
        query = query.where(RandomisationSlot.stratum == stratum)
    allocations = {
        (a.stratum, a.sequence): a
        for a in session.exec(select(RandomisationAllocation).where(RandomisationAllocation.study_id == study.id)).all()
    }
    rows = []
    for slot in session.exec(query.order_by(RandomisationSlot.stratum, RandomisationSlot.sequence)).all():
        taken = allocations.get((slot.stratum, slot.sequence))
        rows.append(
            {
                "stratum": slot.stratum,
                "sequence": slot.sequence,
                "block": slot.block,
                "block_size": slot.block_size,
                "arm": slot.arm,
                "used": taken is not None,
                "subject_id": taken.subject_id if taken else None,
                "number": taken.number if taken else None,
            }
        )
    return rows


def allocation_log(session: Session, study: StudyDef) -> list[dict[str, Any]]:
    rows = session.exec(
        select(RandomisationAllocation)
        .where(RandomisationAllocation.study_id == study.id)
        .order_by(RandomisationAllocation.allocated_at, RandomisationAllocation.number)
    ).all()
    return [
        {**allocation_view(row), "sequence": row.sequence, "site": row.site, "allocated_role": row.allocated_role}
        for row in rows
    ]


def as_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def allocations_of(session: Session, study: StudyDef, subject_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The system's allocation of each of these subjects that has one, as the screening log shows it."""
    if not subject_ids:
        return {}
    rows = session.exec(
        select(RandomisationAllocation).where(
            RandomisationAllocation.study_id == study.id, RandomisationAllocation.subject_id.in_(subject_ids)
        )
    ).all()
    return {
        row.subject_id: {"arm": row.arm, "stratum": row.stratum, "randomisation_number": row.number} for row in rows
    }


def strata_counts(
    session: Session, study: StudyDef, sites: frozenset[str] | None, site: str | None = None
) -> list[dict[str, Any]]:
    """Randomised subjects per site, stratum and arm (allocated ones only: never a slot)."""
    query = select(
        RandomisationAllocation.site, RandomisationAllocation.stratum, RandomisationAllocation.arm, func.count()
    ).where(RandomisationAllocation.study_id == study.id)
    if sites is not None:
        query = query.where(RandomisationAllocation.site.in_(sorted(sites)))
    if site:
        query = query.where(RandomisationAllocation.site == site)
    rows = session.exec(
        query.group_by(RandomisationAllocation.site, RandomisationAllocation.stratum, RandomisationAllocation.arm)
    ).all()
    return [
        {"site": at, "stratum": stratum, "arm": arm, "n": n}
        for at, stratum, arm, n in sorted(rows, key=lambda r: (r[0] or "", r[1], r[2]))
    ]
