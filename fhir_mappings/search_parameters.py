"""The published R4 search parameters of the types a study may keep (data/r4_search_parameters.json, made by
scripts/r4_search_parameters.py from the R4 search-parameters.json, never typed by hand)."""

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "r4_search_parameters.json"


@cache
def r4_search_parameters() -> dict[str, dict[str, dict[str, Any]]]:
    """type -> parameter code -> {type, url, expression, target}."""
    return json.loads(DATA.read_text(encoding="utf-8"))["types"]


def definition(resource_type: str, code: str) -> dict[str, Any] | None:
    return r4_search_parameters().get(resource_type, {}).get(code)
