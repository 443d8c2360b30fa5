"""Request bodies of the query API. Query text is free text and may hold PHI: it is never logged."""

from pydantic import BaseModel, ConfigDict, Field

TEXT_MAX = 4000


class RaiseQuery(BaseModel):
    """A question about a subject's data, optionally narrowed to a form, a visit and an item."""

    model_config = ConfigDict(extra="forbid")

    form_id: str | None = Field(
        default=None, max_length=64, description="a form of the study; inferred from item_id when left out"
    )
    visit_id: str | None = Field(
        default=None,
        max_length=64,
        description="a visit at which the form is collected; inferred when the form has one visit only",
    )
    item_id: str | None = Field(default=None, max_length=64, description="an item of the form")
    text: str = Field(max_length=TEXT_MAX, description="the question to the site")


class Message(BaseModel):
    """An answer by the site, or the reason a monitor reopens a query: text required."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=TEXT_MAX)


class Note(BaseModel):
    """Closing a query: an optional note."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, max_length=TEXT_MAX)
