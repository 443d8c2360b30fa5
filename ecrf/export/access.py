"""Who may receive identified data: a sponsor never; a data manager when they ask for it."""

from fastapi import HTTPException

from ecrf.auth.actor import Actor
from ecrf.auth.policy import can


def deidentify_for(actor: Actor, deidentify: bool) -> bool:
    """True when the export must be de-identified; 403 for a caller asking for what it may not have."""
    if not deidentify and not can(actor, "export.identified"):
        raise HTTPException(403, f"role {actor.role} may only receive de-identified data (deidentify=false refused)")
    return deidentify or not can(actor, "export.identified")


def may_read_job(actor: Actor, owner_sub: str, deidentified: bool, kind: str = "bulk") -> bool:
    """A job is its owner's, and identified data stay with who may have them (an investigator's own-site ODM
    archive with the investigator)."""
    if actor.sub != owner_sub:
        return False
    if deidentified:
        return can(actor, "export.deidentified")
    return can(actor, "export.identified") or (kind == "odm" and can(actor, "export.site_archive"))
