"""Unresolved (open or answered) query counts, shown where a site sees its data."""
from sqlalchemy import func
from sqlmodel import Session, select

from ecrf.queries.models import UNRESOLVED, DataQuery


def unresolved_of_subject(session: Session, subject_id: str) -> int:
    return session.exec(select(func.count()).where(
        DataQuery.subject_id == subject_id, DataQuery.status.in_(UNRESOLVED))).one()


def unresolved_of_form(session: Session, subject_id: str, form_id: str, visit_id: str) -> tuple[int, dict[str, int]]:
    """(total, {item_id: count}) of the queries on one form instance; item-less queries count in the total only."""
    rows = session.exec(select(DataQuery.item_id, func.count()).where(
        DataQuery.subject_id == subject_id, DataQuery.form_id == form_id, DataQuery.visit_id == visit_id,
        DataQuery.status.in_(UNRESOLVED)).group_by(DataQuery.item_id)).all()
    by_item = {item_id: count for item_id, count in rows if item_id is not None}
    return sum(count for _, count in rows), by_item
