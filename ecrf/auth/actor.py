"""Who is calling: the verified claims of a bearer token."""

from dataclasses import dataclass, field

ROLES = ("investigator", "coordinator", "monitor", "data_manager", "sponsor", "ehr", "admin", "randomisation_manager")
# randomisation_manager: the unblinded statistician (CRF-SPEC 6): no site, no clinical data
STUDY_WIDE_ROLES = frozenset({"data_manager", "sponsor", "admin", "randomisation_manager"})


@dataclass(frozen=True)
class Actor:
    sub: str
    roles: frozenset[str]
    sites: frozenset[str] | None = None  # None: every site of the study
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def role(self) -> str:
        return ",".join(sorted(self.roles))

    @property
    def site(self) -> str | None:
        """The one site an actor acts for, when it has exactly one (recorded in the audit trail)."""
        if self.sites and len(self.sites) == 1:
            return next(iter(self.sites))
        return None

    def may_see_site(self, site: str | None) -> bool:
        return self.sites is None or (site is not None and site in self.sites)


SYSTEM = Actor(sub="system", roles=frozenset({"admin"}))
