"""JSON text of resource dicts that hold decimal.Decimal values, without losing digits.

The stdlib encoder prints floats through float.__repr__, so Decimals are written as marked
strings first and the marks are replaced by the bare digits afterwards.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any


def dumps(resource: Any, **kwargs: Any) -> str:
    marker = f"dec{uuid.uuid4().hex}"

    def mark(node: Any) -> Any:
        if isinstance(node, Decimal):
            return f"{marker}:{_plain(node)}"
        if isinstance(node, dict):
            return {key: mark(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [mark(value) for value in node]
        if isinstance(node, (date, datetime)):
            return node.isoformat()
        return node

    text = json.dumps(mark(resource), ensure_ascii=False, **kwargs)
    return re.sub(f'"{marker}:([^"]+)"', r"\1", text)


def _plain(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    text = str(value)
    return format(value, "f") if "E" in text and abs(value.adjusted()) < 30 else text
