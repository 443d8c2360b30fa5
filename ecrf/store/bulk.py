"""Bulk inserts live in ecrf/common/bulk.py, below the store and the audit trail that both use them (kept so
imports of the old path still work)."""
from ecrf.common.bulk import COPY_FROM_ROWS, insert_rows, next_keys  # noqa: F401
