"""Offset/limit paging shared by every list route of /api/v1 (the FHIR door has `_offset`/`_count`)."""

from typing import Annotated

from fastapi import Query, Request

MAX_OFFSET = 1_000_000_000  # far beyond any study; keeps the number inside every database's integer

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
Limit = Annotated[int | None, Query(ge=1, le=MAX_OFFSET, description="rows per page; capped at ECRF_PAGE_SIZE_MAX")]


def page(request: Request, offset: int, limit: int | None) -> tuple[int, int]:
    settings = request.app.state.runtime.settings
    return offset, min(limit or settings.page_size_default, settings.page_size_max)
