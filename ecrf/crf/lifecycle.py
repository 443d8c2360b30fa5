"""Form instance lifecycle: draft -> complete -> verified -> signed -> locked (and unlock).

`complete`/`draft` follow from the data (all required items present or not); the other steps are
explicit acts of a role, each declared as an action of the access policy.
"""
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

STATUSES = ("draft", "complete", "verified", "signed", "locked")
REASON_NEEDED = frozenset({"complete", "verified", "signed"})


@dataclass(frozen=True)
class Transition:
    name: str
    action: str          # the policy action a caller needs
    source: str          # status the form must be in
    target: str
    needs_reason: bool = False


TRANSITIONS = {
    "verify": Transition("verify", "form.verify", "complete", "verified"),
    "sign": Transition("sign", "form.sign", "verified", "signed"),
    "lock": Transition("lock", "form.lock", "signed", "locked"),
    "unlock": Transition("unlock", "form.lock", "locked", "signed", needs_reason=True),
}


def changed(instance: Any, status: str, actor: Any, now: datetime) -> None:
    """A change of the form's data (or its withdrawal): the new status and version, who and when; SDV and
    signature no longer cover it."""
    instance.status = status
    instance.version += 1
    instance.updated_at, instance.updated_by, instance.updated_role = now, actor.sub, actor.role
    instance.verified_at = instance.verified_by = None
    instance.signed_at = instance.signed_by = instance.signature_meaning = instance.signature_hash = None


def status_after_edit(complete: bool) -> str:
    """Any edit drops SDV and signature: the form is complete or draft again."""
    return "complete" if complete else "draft"


def signed_content_hash(*, subject_id: str, form_id: str, visit_id: str, version: int, visit_date: str,
                        items: dict[str, Any], meaning: str, name: str, at: datetime) -> str:
    """SHA-256 of what was signed: the form's values as stored, who signed, what it means, when."""
    payload = {"subject": subject_id, "form": form_id, "visit": visit_id, "version": version,
               "visit_date": visit_date, "items": items, "meaning": meaning, "name": name,
               "at": at.isoformat(timespec="microseconds")}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
