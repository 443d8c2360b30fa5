"""Request bodies of the eCRF entry and lifecycle API."""

from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FormEntry(BaseModel):
    """The complete content of a form at a visit: items left out (or null) are cleared."""

    model_config = ConfigDict(extra="forbid")

    visit_date: date | None = Field(
        default=None, description="default: today; a form with a date item (e.g. surgery_date) takes that date"
    )
    items: dict[str, Any] = Field(
        default_factory=dict,
        description='item id -> value; a quantity is {"value": 12.3, "unit": "g/dL"} or a number in the canonical unit',
    )
    reason: str | None = Field(
        default=None, max_length=2000, description="reason for change; required once the form is complete"
    )


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meaning: str = Field(
        min_length=1,
        max_length=500,
        description="what the signature means, e.g. "
        "'I approve the data of this form'; the signer's name is the token's sub",
    )


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)
