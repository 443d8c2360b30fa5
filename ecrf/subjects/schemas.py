"""Request bodies of the subjects API."""

from datetime import date

from pydantic import BaseModel, ConfigDict, Field


class Enrolment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str = Field(description="site id, e.g. S01", max_length=32)
    mrn: str = Field(description="the subject's medical record number at the site", min_length=1, max_length=64)
    consent_date: date = Field(description="informed-consent date (YYYY-MM-DD), not in the future")
