"""Moved to ecrf/common/pagination.py (kept so imports of the old path still work)."""
from ecrf.common.pagination import MAX_OFFSET, Limit, Offset, page  # noqa: F401
