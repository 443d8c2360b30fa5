"""Response bodies of the reports API: counts only. A null count is hidden (small-cell protection)."""

from pydantic import BaseModel, Field

Counts = dict[str, int | None]


class FormCounts(BaseModel):
    form: str
    visit: str
    by_status: Counts = Field(description="form instances per lifecycle status (draft ... locked)")
    done: int | None = Field(description="complete, verified, signed or locked; null when a part is hidden")


class Randomised(BaseModel):
    total: int | None = Field(description="randomised subjects; null when an arm's count is hidden")
    by_arm: Counts = Field(description="per arm of the study; `other`: randomised without a valid arm")
    by_stratum: dict[str, Counts] = Field(
        default_factory=dict,
        description="allocations by the system per stratum of the randomisation scheme and "
        "arm (allocated subjects only; version-1 entered arms are not in a stratum)",
    )


class ScopeCounts(BaseModel):
    subjects: int = Field(description="subjects of the study (ResearchSubjects not deleted); always exact")
    by_status: Counts = Field(description="per ResearchSubject.status (every FHIR R4 code)")
    eligibility: Counts = Field(description="per eligibility status (eligible, ineligible, incomplete)")
    randomised: Randomised
    forms: list[FormCounts] = Field(
        description="per form and visit of the study (the CTC timepoints are the `ctc` form's visits)"
    )
    sae: Counts | None = Field(
        default=None,
        description="serious adverse events per reporting status (due, "
        "overdue, reported, not_serious, withdrawn): counts, never details; null: no SAE clock",
    )
    suppressed: bool = Field(description="true when a count of this scope is hidden")


class SiteCounts(ScopeCounts):
    site: str | None = Field(description="site id (null: subjects with no site)")


class EnrolmentReport(BaseModel):
    study: str
    min_cell: int | None = Field(
        description="counts from 1 to min_cell - 1 are hidden (null) for this caller, "
        "with others hidden so that subtraction cannot restore them; "
        "null: exact counts"
    )
    hidden_cells: int = Field(description="how many counts are hidden")
    sites: list[SiteCounts] = Field(description="the sites the caller may see")
    overall: ScopeCounts = Field(description="the sum over those sites")
