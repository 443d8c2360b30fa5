"""Versions as both doors write them in ETags and read them back from If-Match (W/"3", "3" or 3)."""

import re

VERSION_ID = re.compile("[0-9]{1,9}")  # ASCII digits only ("²".isdigit() is true), within every database's integer


def version_of_etag(value: str) -> int | None:
    """The version an ETag (or If-Match value) names, or None when it names none; each door says so its way."""
    text = value.strip()
    text = text[2:] if text.startswith("W/") else text
    text = text.strip('"')
    return int(text) if VERSION_ID.fullmatch(text) else None
