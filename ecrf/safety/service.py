"""The SAE reporting clock (CRF-SPEC 7.2): started in the transaction of the save that first makes an entry
serious, stopped by the investigator's report; `due`/`overdue` are computed from the clock at read time.
Every step is in the audit trail."""

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, select

from ecrf.audit import service as audit
from ecrf.crf.models import FormInstance
from ecrf.safety.models import SaeReport
from ecrf.safety.scheme import SaeClock
from ecrf.common.errors import Conflict, NotFound
from ecrf.store.service import ClinicalStore

STATUSES = ("due", "overdue", "reported", "not_serious", "withdrawn")
OPEN = ("due", "overdue")
RESOURCE = "SaeReport"


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else (moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def after_entry_save(
    clock: SaeClock, store: ClinicalStore, instance: FormInstance, values: dict[str, Any], now: datetime
) -> None:
    """An entry of the clock's form was saved: start its clock the first time it is serious (awareness), and
    keep whether it still is."""
    if instance.form_id != clock.form or not instance.entry_id:
        return
    serious = values.get(clock.serious_item) is True
    row = store.session.get(SaeReport, instance.id)
    if row is None:
        if not serious:
            return
        row = SaeReport(
            instance_id=instance.id,
            subject_id=instance.subject_id,
            patient_id=instance.patient_id,
            site=instance.site,
            form_id=instance.form_id,
            entry_id=instance.entry_id,
            aware_at=now,
            aware_by=store.actor.sub,
            serious=True,
        )
        store.session.add(row)
        _audit(store, row, "sae.aware", None, _aware(row.aware_at).isoformat(), None)
        return
    if row.serious != serious:
        _audit(store, row, "sae.serious", str(row.serious).lower(), str(serious).lower(), None)
        row.serious = serious
        store.session.add(row)


def report(
    store: ClinicalStore,
    clock: SaeClock,
    subject_id: str,
    form_id: str,
    entry_id: str,
    *,
    reported_at: datetime | None,
    reference: str,
    now: datetime,
) -> dict[str, Any]:
    """The investigator records the report of a serious entry to the sponsor (once)."""
    row = _row(store, subject_id, form_id, entry_id, for_update=True)
    if row.reported_at is not None:
        raise Conflict(f"the SAE of entry {entry_id} was reported at {_aware(row.reported_at).isoformat()}")
    moment = _aware(reported_at) if reported_at is not None else now
    if moment > now:
        raise Conflict("a report cannot be dated in the future")
    if moment < _aware(row.aware_at):
        raise Conflict("a report cannot be dated before the site became aware of the SAE")
    row.reported_at, row.reported_by, row.report_reference = moment, store.actor.sub, reference
    store.session.add(row)
    store.session.flush()
    _audit(store, row, "sae.report", None, f"{moment.isoformat()} {reference}", None)
    return describe(clock, row, _instance(store, row), now)


def _row(store: ClinicalStore, subject_id: str, form_id: str, entry_id: str, *, for_update: bool) -> SaeReport:
    query = select(SaeReport).where(
        SaeReport.subject_id == subject_id, SaeReport.form_id == form_id, SaeReport.entry_id == entry_id
    )
    row = store.session.exec(query.with_for_update() if for_update else query).one_or_none()
    if row is None or not store.actor.may_see_site(row.site):
        raise NotFound(f"entry {entry_id} of form {form_id} of subject {subject_id} is not a serious adverse event")
    return row


def _instance(store: ClinicalStore, row: SaeReport) -> FormInstance | None:
    return store.session.get(FormInstance, row.instance_id)


def status_of(clock: SaeClock, row: SaeReport, instance: FormInstance | None, now: datetime) -> str:
    if instance is not None and instance.status == "entered_in_error":
        return "withdrawn"
    if row.reported_at is not None:
        return "reported"
    if not row.serious:
        return "not_serious"
    return "due" if now <= _aware(row.aware_at) + clock.due_within else "overdue"


def describe(clock: SaeClock, row: SaeReport, instance: FormInstance | None, now: datetime) -> dict[str, Any]:
    aware = _aware(row.aware_at)
    reported = _aware(row.reported_at)
    return {
        "subject_id": row.subject_id,
        "site": row.site,
        "form_id": row.form_id,
        "entry_id": row.entry_id,
        "status": status_of(clock, row, instance, now),
        "aware_at": aware.isoformat(),
        "aware_by": row.aware_by,
        "due_at": (aware + clock.due_within).isoformat(),
        "reported_at": reported.isoformat() if reported else None,
        "reported_by": row.reported_by,
        "reference": row.report_reference,
        "on_time": None if reported is None else reported <= aware + clock.due_within,
    }


@dataclass
class Listing:
    items: list[dict[str, Any]]
    total: int


def listing(
    store: ClinicalStore, clock: SaeClock, *, site: str | None, statuses: set[str] | None, now: datetime
) -> Listing:
    """Serious adverse events of the caller's sites (one site with `site`), oldest awareness first."""
    query = select(SaeReport, FormInstance).join(FormInstance, FormInstance.id == SaeReport.instance_id)
    if store.actor.sites is not None:
        query = query.where(SaeReport.site.in_(sorted(store.actor.sites)))
    if site is not None:
        query = query.where(SaeReport.site == site)
    rows = store.session.exec(query.order_by(SaeReport.aware_at, SaeReport.instance_id)).all()
    found = [describe(clock, row, instance, now) for row, instance in rows]
    if statuses:
        found = [item for item in found if item["status"] in statuses]
    return Listing(found, len(found))


def count_rows(
    session: Session, clock: SaeClock, sites: frozenset[str] | None, now: datetime
) -> list[tuple[str | None, str, int]]:
    """(site, status, count) of every serious adverse event of the sites: counts only, for the aggregate report."""
    query = select(SaeReport, FormInstance).join(FormInstance, FormInstance.id == SaeReport.instance_id)
    if sites is not None:
        query = query.where(SaeReport.site.in_(sorted(sites)))
    counts: Counter = Counter()
    for row, instance in session.exec(query).all():
        counts[(row.site, status_of(clock, row, instance, now))] += 1
    return [(site, status, n) for (site, status), n in sorted(counts.items(), key=str)]


def _audit(
    store: ClinicalStore, row: SaeReport, action: str, old: str | None, new: str | None, reason: str | None
) -> None:
    audit.append(
        store.session,
        store.actor,
        action,
        source="form",
        patient_id=row.patient_id,
        form_id=row.form_id,
        old_value=old,
        new_value=new,
        reason=reason,
        resource=f"FormInstance/{row.instance_id}",
    )
