"""Study-level aggregate counts, counted by the database (GROUP BY), per site in the caller's scope and overall.

Only counts leave: no subject id, date or identifier. Callers who may not read subject-level data
(sponsors) get small cells hidden (ECRF_REPORT_MIN_CELL, see suppression.py); everyone else exact counts.
"""

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func
from sqlmodel import Session, select

from ecrf.auth.actor import Actor
from ecrf.auth.policy import can
from ecrf.crf.lifecycle import STATUSES as FORM_STATUSES
from ecrf.crf.models import FormInstance
from ecrf.crf.schedule import DONE_STATUSES
from ecrf.eligibility.models import EligibilityState
from ecrf.eligibility.service import STATUSES as ELIGIBILITY_STATUSES
from ecrf.randomisation.models import RandomisationAllocation
from ecrf.reports.suppression import hidden_cells
from ecrf.store.models import ItemFact, ResourceHead, SearchToken
from ecrf.subjects.service import study_reference
from study_model.definitions import StudyDef

# FHIR R4 ResearchSubject.status (required binding): every code is a column, so a column's presence says nothing.
SUBJECT_STATUSES = (
    "candidate",
    "eligible",
    "follow-up",
    "ineligible",
    "not-registered",
    "off-study",
    "on-study",
    "on-study-intervention",
    "on-study-observation",
    "pending-on-study",
    "potential-candidate",
    "screening",
    "withdrawn",
)
OTHER_ARM = "other"  # randomised, but no valid arm on the ResearchSubject
OVERALL = ("overall",)


@dataclass
class Table:
    """Counts of one breakdown: (site, column) -> n over the site rows; the overall row is their sum."""

    columns: list[str]  # they split each row's subjects or forms, so a row's total is known or derivable
    counts: dict[tuple[Hashable, str], int] = field(default_factory=dict)
    hidden: set[tuple[Hashable, str]] = field(default_factory=set)

    def add(self, rows: Iterable[tuple[Any, str, int]]) -> None:
        for site, column, count in rows:
            if column not in self.columns:
                self.columns.append(column)
            self.counts[(site, column)] = self.counts.get((site, column), 0) + count

    def complete(self, sites: list[Hashable], min_cell: int | None) -> None:
        for column in self.columns:
            self.counts[(OVERALL, column)] = sum(self.counts.get((site, column), 0) for site in sites)
        if min_cell:
            self.hidden = hidden_cells(self.counts, [*sites, OVERALL], self.columns, min_cell)

    def row(self, site: Hashable) -> dict[str, int | None]:
        return {
            column: None if (site, column) in self.hidden else self.counts.get((site, column), 0)
            for column in self.columns
        }


def queries(study: StudyDef, sites: frozenset[str] | None) -> dict[str, Any]:
    """The report's GROUP BY queries, each giving (site, ..., count) rows of the caller's sites."""
    return {
        "subjects": _subjects_by_status(study, sites),
        "eligibility": _scoped(
            select(EligibilityState.site, EligibilityState.status, func.count()).group_by(
                EligibilityState.site, EligibilityState.status
            ),
            EligibilityState.site,
            sites,
        ),
        "randomised": _randomised(sites),
        "arms": _randomised_by_arm(study, sites),
        "strata": _scoped(
            select(
                RandomisationAllocation.site, RandomisationAllocation.stratum, RandomisationAllocation.arm, func.count()
            )
            .where(RandomisationAllocation.study_id == study.id)
            .group_by(RandomisationAllocation.site, RandomisationAllocation.stratum, RandomisationAllocation.arm),
            RandomisationAllocation.site,
            sites,
        ),
        "forms": _scoped(
            select(FormInstance.site, FormInstance.form_id, FormInstance.visit_id, FormInstance.status, func.count())
            .where(FormInstance.status != "entered_in_error")
            .group_by(FormInstance.site, FormInstance.form_id, FormInstance.visit_id, FormInstance.status),
            FormInstance.site,
            sites,
        ),
    }


def enrolment(
    session: Session,
    study: StudyDef,
    actor: Actor,
    min_cell: int,
    strata: tuple[str, ...] = (),
    sae: tuple[tuple[str, ...], list[tuple]] | None = None,
) -> dict[str, Any]:
    """`strata`: the randomisation scheme's strata (every one a column, allocated or not); `sae`: (the SAE
    statuses, rows (site, status, count)) when the study has an SAE clock."""
    protect = min_cell if min_cell > 1 and not can(actor, "subject.read") else None
    rows = {
        name: session.exec(query).all() if query is not None else []
        for name, query in queries(study, actor.sites).items()
    }
    statuses = Table(list(SUBJECT_STATUSES))
    statuses.add(rows["subjects"])
    eligibility = Table(list(ELIGIBILITY_STATUSES))
    eligibility.add(rows["eligibility"])
    arms = Table([arm.id for arm in study.arms] + [OTHER_ARM])
    arms.add((site, arm if arm in arms.columns else OTHER_ARM, n) for site, arm, n in rows["arms"])
    with_arm = {site: sum(arms.counts.get((site, column), 0) for column in arms.columns) for site, *_ in rows["arms"]}
    arms.add((site, OTHER_ARM, n - with_arm.get(site, 0)) for site, n in rows["randomised"])
    by_stratum = Table([f"{stratum} {arm.id}" for stratum in strata for arm in study.arms])
    by_stratum.add((site, f"{stratum} {arm}", n) for site, stratum, arm, n in rows["strata"])
    forms = {(form.id, visit_id): Table(list(FORM_STATUSES)) for form in study.forms for visit_id in form.visits}
    for site, form_id, visit_id, status, n in rows["forms"]:
        forms.setdefault((form_id, visit_id), Table(list(FORM_STATUSES))).add([(site, status, n)])

    saes = None
    if sae is not None:
        saes = Table(list(sae[0]))
        saes.add(sae[1])
    tables = [statuses, eligibility, arms, by_stratum, *forms.values(), *([saes] if saes else [])]
    sites = _site_rows(study, actor, {site for table in tables for site, _ in table.counts})
    for table in tables:
        table.complete(sites, protect)

    def scope(site: Hashable) -> dict[str, Any]:
        by_arm = arms.row(site)
        form_views = []
        for (form_id, visit_id), table in forms.items():
            by_status = table.row(site)
            form_views.append(
                {
                    "form": form_id,
                    "visit": visit_id,
                    "by_status": by_status,
                    "done": _sum_or_none(by_status[s] for s in DONE_STATUSES if s in by_status),
                }
            )
        view = {
            "subjects": sum(statuses.counts.get((site, status), 0) for status in statuses.columns),
            "by_status": statuses.row(site),
            "eligibility": eligibility.row(site),
            "randomised": {
                "total": _sum_or_none(by_arm.values()),
                "by_arm": by_arm,
                "by_stratum": _strata_view(by_stratum.row(site)),
            },
            "forms": form_views,
            "sae": saes.row(site) if saes else None,
        }
        view["suppressed"] = any((site, column) in table.hidden for table in tables for column in table.columns)
        return view

    return {
        "study": study.id,
        "min_cell": protect,
        "hidden_cells": sum(len(table.hidden) for table in tables),
        "sites": [{"site": site, **scope(site)} for site in sites],
        "overall": scope(OVERALL),
    }


def _strata_view(row: dict[str, int | None]) -> dict[str, dict[str, int | None]]:
    view: dict[str, dict[str, int | None]] = {}
    for column, n in row.items():
        stratum, arm = column.rsplit(" ", 1)
        view.setdefault(stratum, {})[arm] = n
    return view


def _scoped(query, column, sites: frozenset[str] | None):
    return query if sites is None else query.where(column.in_(sorted(sites)))


def _site_rows(study: StudyDef, actor: Actor, found: set[Hashable]) -> list[Hashable]:
    """The study's sites the caller may see, then any other site found in the data (within the caller's scope)."""
    rows: list[Hashable] = [site.id for site in study.sites if actor.may_see_site(site.id)]
    extra = [site for site in found if site is not OVERALL and site not in rows]
    return rows + sorted(extra, key=lambda site: (site is None, site or ""))


def _sum_or_none(values: Iterable[int | None]) -> int | None:
    values = list(values)
    return None if any(value is None for value in values) else sum(values)


def _subjects_by_status(study: StudyDef, sites: frozenset[str] | None):
    """(site, ResearchSubject.status, n) of the study's current, not deleted ResearchSubjects."""
    of_study = select(SearchToken.resource_id).where(
        SearchToken.resource_type == "ResearchSubject",
        SearchToken.param == "study",
        SearchToken.value == study_reference(study),
    )
    query = (
        select(ResourceHead.site, SearchToken.code, func.count())
        .select_from(ResourceHead)
        .join(
            SearchToken,
            and_(
                SearchToken.resource_type == ResourceHead.resource_type,
                SearchToken.resource_id == ResourceHead.resource_id,
                SearchToken.param == "status",
            ),
        )
        .where(
            ResourceHead.resource_type == "ResearchSubject",
            ResourceHead.deleted == False,  # noqa: E712
            ResourceHead.resource_id.in_(of_study),
        )
        .group_by(ResourceHead.site, SearchToken.code)
    )
    return _scoped(query, ResourceHead.site, sites)


def _arm_item(study: StudyDef) -> tuple[str, str] | None:
    """The item that assigns the arm (ResearchSubject.assignedArm), as data in the study definition."""
    return next(
        (
            (form.id, item.id)
            for form in study.forms
            for item in form.items
            if item.fhir.kind == "research_subject" and item.fhir.path == "assignedArm"
        ),
        None,
    )


def _randomised(sites: frozenset[str] | None):
    """(site, n) of randomised subjects: eligibility frozen by the randomisation."""
    query = select(EligibilityState.site, func.count()).where(EligibilityState.frozen_at.is_not(None))
    return _scoped(query.group_by(EligibilityState.site), EligibilityState.site, sites)


def _randomised_by_arm(study: StudyDef, sites: frozenset[str] | None):
    """(site, arm, n) of randomised subjects with a valid arm (the ResearchSubject's assignedArm item fact).
    Driven from the few arm facts to the state's primary key, whatever the planner guesses of their number."""
    arm_item = _arm_item(study)
    if arm_item is None:
        return None
    form_id, item_id = arm_item
    query = (
        select(EligibilityState.site, ItemFact.value_text, func.count())
        .select_from(ItemFact)
        .join(EligibilityState, EligibilityState.subject_id == ItemFact.resource_id)
        .where(
            ItemFact.resource_type == "ResearchSubject",
            ItemFact.form_id == form_id,
            ItemFact.item_id == item_id,
            ItemFact.error.is_(None),
            EligibilityState.frozen_at.is_not(None),
        )
        .group_by(EligibilityState.site, ItemFact.value_text)
    )
    return _scoped(query, EligibilityState.site, sites)
