"""Eligibility as derived state of the store: recomputed in the transaction of every write (the derived
hook), persisted per subject, frozen once randomised, mirrored in ResearchSubject.status and audited."""

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func
from sqlmodel import Session, select

from ecrf.audit import service as audit
from ecrf.eligibility.engine import ELIGIBLE, INCOMPLETE, INELIGIBLE, Result, evaluate
from ecrf.eligibility.models import EligibilityState
from ecrf.eligibility.patient_data import CHUNK, load
from ecrf.store.models import ResourceHead, ResourceVersion
from ecrf.store.service import ClinicalStore, WriteContext
from ecrf.subjects.service import resolve, study_reference
from study_model.definitions import StudyDef

STATUSES = (ELIGIBLE, INELIGIBLE, INCOMPLETE)
SUBJECT_STATUS = {ELIGIBLE: "eligible", INELIGIBLE: "ineligible", INCOMPLETE: "candidate"}
MANAGED_SUBJECT_STATUSES = frozenset(SUBJECT_STATUS.values())  # others (on-study, withdrawn...) are left alone


def recompute(store: ClinicalStore, patient_ids: set[str]) -> None:
    """The derived hook: re-evaluate every subject of the touched patients, inside the write's transaction."""
    study = store.indexer.study
    subjects = _subjects_of(store.session, study, patient_ids)
    if not subjects:
        return
    states = _states(store.session, [subject_id for subject_id, *_ in subjects])
    live = [s for s in subjects if not s[3]]
    data = load(store.session, study, {patient_id for _, patient_id, *_ in live})
    results: dict[str, Result] = {}
    now = datetime.now(UTC)
    entries: list[dict[str, Any]] = []
    for subject_id, patient_id, site, deleted, content in subjects:
        state = states.get(subject_id)
        if deleted:
            if state is not None:
                store.session.delete(state)
            continue
        if patient_id not in results:
            results[patient_id] = evaluate(study, data[patient_id], now, study.today_at(site, now))
        entries += _update_state(store, subject_id, patient_id, site, content, state, results[patient_id], now)
    store.session.flush()
    audit.append_many(store.session, store.actor, entries)


def _update_state(
    store: ClinicalStore,
    subject_id: str,
    patient_id: str,
    site: str | None,
    content: dict[str, Any],
    state: EligibilityState | None,
    result: Result,
    now: datetime,
) -> list[dict[str, Any]]:
    live = result.as_dict()
    if state is None:
        state = EligibilityState(
            subject_id=subject_id,
            patient_id=patient_id,
            site=site,
            status="",
            live_status="",
            blocking="[]",
            result="{}",
            evaluated_at=now,
        )
    old_status, old_changed = state.status or None, state.changed_since_randomisation
    if result.randomised and state.frozen_result is None:
        state.frozen_result, state.frozen_at = orjson.dumps(live).decode(), now
    elif not result.randomised:
        state.frozen_result, state.frozen_at = None, None
    frozen = orjson.loads(state.frozen_result) if state.frozen_result else None
    acting = frozen or live
    state.site, state.patient_id = site, patient_id
    state.status, state.live_status = acting["status"], live["status"]
    state.blocking = orjson.dumps(blocking_of(acting)).decode()
    state.result = orjson.dumps(live).decode()
    state.changed_since_randomisation = frozen is not None and fingerprint(frozen) != fingerprint(live)
    state.evaluated_at = now
    store.session.add(state)
    common = {"source": "system", "patient_id": patient_id, "resource": f"ResearchSubject/{subject_id}"}
    entries = []
    if old_status != state.status:
        blockers = ", ".join(b["id"] for b in blocking_of(acting))
        entries.append(
            {
                **common,
                "action": "eligibility.status",
                "old_value": old_status,
                "new_value": state.status,
                "reason": f"blocking: {blockers}" if blockers else None,
            }
        )
    if old_changed != state.changed_since_randomisation:
        entries.append(
            {
                **common,
                "action": "eligibility.changed_since_randomisation",
                "old_value": str(old_changed).lower(),
                "new_value": str(state.changed_since_randomisation).lower(),
                "reason": f"live status {state.live_status}, frozen {state.status}",
            }
        )
    _follow_subject_status(store, subject_id, content, state.status)
    return entries


def _follow_subject_status(store: ClinicalStore, subject_id: str, content: dict[str, Any], status: str) -> None:
    wanted = SUBJECT_STATUS[status]
    current = content.get("status")
    if current == wanted or (current is not None and current not in MANAGED_SUBJECT_STATUSES):
        return
    store.update(
        "ResearchSubject",
        subject_id,
        {**content, "status": wanted},
        WriteContext(source="system", reason=f"eligibility {status}"),
    )


def blocking_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": c["id"], "kind": c["kind"], "result": c["result"], "reason": c["reason"]}
        for c in result["criteria"]
        if c["result"] != ("met" if c["kind"] == "inclusion" else "not_met")
    ]


def fingerprint(result: dict[str, Any]) -> list[Any]:
    """What the data said: each criterion's result and the exact evidence (resource versions and values)."""
    return [
        (
            c["id"],
            c["result"],
            sorted((e.get("reference"), e.get("version"), str(e.get("value")), e.get("code")) for e in c["evidence"]),
        )
        for c in result["criteria"]
    ]


def _subjects_of(session: Session, study: StudyDef, patient_ids: set[str]) -> list[tuple]:
    """(subject id, patient id, site, deleted, content) of the study's ResearchSubjects of these patients."""
    ids = sorted(patient_ids)
    found = []
    for start in range(0, len(ids), CHUNK):
        rows = session.exec(
            select(
                ResourceHead.resource_id,
                ResourceHead.patient_id,
                ResourceHead.site,
                ResourceHead.deleted,
                ResourceVersion.content,
            )
            .join(ResourceVersion, ResourceVersion.pk == ResourceHead.version_pk)
            .where(
                ResourceHead.resource_type == "ResearchSubject", ResourceHead.patient_id.in_(ids[start : start + CHUNK])
            )
        ).all()
        for subject_id, patient_id, site, deleted, text in rows:
            content = orjson.loads(text)
            if (content.get("study") or {}).get("reference") == study_reference(study):
                found.append((subject_id, patient_id, site, deleted, content))
    return found


def _states(session: Session, subject_ids: list[str]) -> dict[str, EligibilityState]:
    """Locked before the facts are read, so concurrent writers of one patient evaluate one after the other
    and the last to commit has seen the other's data (PostgreSQL; SQLite writers are serial anyway)."""
    states = {}
    for start in range(0, len(subject_ids), CHUNK):
        for state in session.exec(
            select(EligibilityState)
            .where(EligibilityState.subject_id.in_(subject_ids[start : start + CHUNK]))
            .order_by(EligibilityState.subject_id)
            .with_for_update()
        ).all():
            states[state.subject_id] = state
    return states


# -- reads -------------------------------------------------------------------------------------


def subject_view(store: ClinicalStore, study: StudyDef, subject_id: str) -> dict[str, Any]:
    """The subject's eligibility now (R = evaluation time, or the randomisation date); once randomised the
    frozen result, with the live one beside it and a flag when the data have changed since."""
    subject = resolve(store, study, subject_id)
    patient = load(store.session, study, [subject.patient_id])[subject.patient_id]
    live = evaluate(study, patient, today=study.today_at(subject.site)).as_dict()
    state = store.session.get(EligibilityState, subject.id)
    view: dict[str, Any] = {
        "subject": subject.id,
        **live,
        "live_status": live["status"],
        "frozen": False,
        "changed_since_randomisation": False,
    }
    if live["randomised"] and state is not None and state.frozen_result:
        frozen = orjson.loads(state.frozen_result)
        view = {
            "subject": subject.id,
            **frozen,
            "live_status": live["status"],
            "frozen": True,
            "frozen_at": state.frozen_at.isoformat() if state.frozen_at else None,
            "changed_since_randomisation": fingerprint(frozen) != fingerprint(live),
            "live": live,
        }
    return view


def randomisation_basis(study: StudyDef, store: ClinicalStore, patient_id: str) -> dict[str, Any]:
    """What the randomisation gate of the eCRF door checks: the frozen result once randomised, else the
    live one (the entry being saved is already in the transaction, so R is its randomisation date)."""
    frozen = store.session.exec(
        select(EligibilityState.frozen_result).where(
            EligibilityState.patient_id == patient_id, EligibilityState.frozen_result.is_not(None)
        )
    ).first()
    if frozen:
        result = orjson.loads(frozen)
    else:
        head = store.session.get(ResourceHead, ("Patient", patient_id))
        today = study.today_at(head.site if head is not None else None)
        result = evaluate(study, load(store.session, study, [patient_id])[patient_id], today=today).as_dict()
    return {
        **result,
        "overall": result["status"],
        "criteria": [{**c, "outcome": c["result"]} for c in result["criteria"]],
    }


def screening_log(
    store: ClinicalStore, *, site: str | None, status: str | None, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """One page of the screening log: each subject's eligibility (its allocation, randomisation's, is joined
    by the door: randomisation loads the patient data of this package, so this one reads nothing of it)."""
    query = select(EligibilityState)
    if store.actor.sites is not None:
        query = query.where(EligibilityState.site.in_(sorted(store.actor.sites)))
    if site:
        query = query.where(EligibilityState.site == site)
    if status:
        query = query.where(EligibilityState.status == status)
    total = store.session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = store.session.exec(query.order_by(EligibilityState.subject_id).offset(offset).limit(limit)).all()
    return total, [
        {
            "subject": row.subject_id,
            "site": row.site,
            "status": row.status,
            "live_status": row.live_status,
            "frozen": row.frozen_result is not None,
            "changed_since_randomisation": row.changed_since_randomisation,
            "blocking": orjson.loads(row.blocking),
            "evaluated_at": _iso(row.evaluated_at),
        }
        for row in rows
    ]


def _iso(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
