"""The one access policy: which role may do which action. Everything not listed is denied.

Routes declare their action with `requires(action)`; site scoping is applied by the store where data
is read, using the actor's `sites`. On the FHIR door each interaction also names its resource type and
SMART permissions (`c r u d s`): a token carrying SMART scopes must be granted them too (ecrf/auth/scopes.py),
so a scope narrows what the role allows and never widens it.
"""

from ecrf.auth import scopes
from ecrf.auth.actor import Actor

PERMISSIONS: dict[str, frozenset[str]] = {
    "study.read": frozenset(
        {"investigator", "coordinator", "monitor", "data_manager", "sponsor", "ehr", "admin", "randomisation_manager"}
    ),
    "subject.enrol": frozenset({"investigator", "coordinator"}),
    "subject.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    "identifiers.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    "form.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    "form.write": frozenset({"investigator", "coordinator"}),
    "form.verify": frozenset({"monitor"}),
    "form.sign": frozenset({"investigator"}),
    "form.lock": frozenset({"data_manager"}),
    "audit.read": frozenset({"investigator", "coordinator", "monitor", "data_manager", "admin"}),
    "eligibility.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    # derived endpoints with their dates (CRF-SPEC 8): identified roles; sponsors get the de-identified dataset
    "endpoints.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    "query.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    "query.raise": frozenset({"monitor", "data_manager"}),
    "query.answer": frozenset({"investigator", "coordinator"}),
    "query.close": frozenset({"monitor", "data_manager"}),
    "fhir.read": frozenset({"investigator", "coordinator", "monitor", "data_manager", "ehr"}),
    "fhir.write": frozenset({"investigator", "coordinator", "ehr"}),
    "export.deidentified": frozenset({"sponsor", "data_manager"}),
    "export.identified": frozenset({"data_manager"}),
    # an investigator's copy of its own site's records (21 CFR 11.10(b)): the identified ODM archive of its site
    "export.site_archive": frozenset({"investigator"}),
    "export.job": frozenset({"sponsor", "data_manager", "investigator"}),  # poll, download, cancel one's own jobs
    "report.aggregate": frozenset({"sponsor", "data_manager", "monitor"}),
    "access_log.read": frozenset({"admin"}),
    "settings.read": frozenset({"admin"}),
    "audit.verify": frozenset({"admin", "data_manager"}),
    # randomisation (CRF-SPEC 6): the site allocates; only the unblinded statistician sees lists and slots
    "randomisation.allocate": frozenset({"investigator", "coordinator"}),
    "randomisation.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),  # own allocation
    "randomisation.lists": frozenset({"randomisation_manager"}),
    "randomisation.note": frozenset({"data_manager"}),  # a mis-randomisation is a note; the allocation stays
    # serious adverse events (CRF-SPEC 7.2): the investigator reports; the site and the monitors follow the clock
    "sae.report": frozenset({"investigator"}),
    "safety.read": frozenset({"investigator", "coordinator", "monitor", "data_manager"}),
    "client.manage": frozenset({"admin"}),  # machine clients of SMART Backend Services (ecrf/smart)
}
PUBLIC = "public"


def can(
    actor: Actor, action: str, site: str | None = None, *, resource_type: str | None = None, permissions: str = ""
) -> bool:
    """May `actor` do `action` (at `site`, when the resource belongs to one; on `resource_type` needing the
    SMART `permissions`, on the FHIR door)?"""
    allowed = PERMISSIONS.get(action)
    if allowed is None or not (actor.roles & allowed):
        return False
    if permissions and (resource_type is None or not scopes.allows(actor.scopes, resource_type, permissions)):
        return False
    return site is None or actor.may_see_site(site)


# Role combinations. A token may carry several roles, and `can` grants the union of what they allow; two
# pairs would widen access beyond what either role is for, so a token asking for them is refused (401):
# - `ehr` is a system, not a person: its reads are limited to what it pushed, which any human role would
#   widen to the whole site. It combines with no other role.
# - `sponsor` sees de-identified data only: combined with a role that reads identifiers it would get them.
EXCLUSIVE_ROLES = frozenset({"ehr"})
DEIDENTIFIED_ONLY_ROLES = frozenset({"sponsor"})


def combination_refusal(roles: frozenset[str] | set[str]) -> str | None:
    """Why a token carrying all of `roles` is refused, or None when the combination is allowed."""
    roles = frozenset(roles)
    for role in sorted(EXCLUSIVE_ROLES & roles):
        others = roles - {role}
        if others:
            return f"role {role} cannot be combined with any other role (token also has {', '.join(sorted(others))})"
    identified = roles & PERMISSIONS["identifiers.read"]
    for role in sorted(DEIDENTIFIED_ONLY_ROLES & roles):
        if identified:
            return (
                f"role {role} sees de-identified data only and cannot be combined with a role that reads "
                f"identifiers ({', '.join(sorted(identified))})"
            )
    return None
