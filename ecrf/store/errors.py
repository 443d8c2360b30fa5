"""The store's failures live in ecrf/common/errors.py (kept so imports of the old path still work)."""
from ecrf.common.errors import (Conflict, Forbidden, Gone, Invalid, NotFound, OffCalendar,  # noqa: F401
                                StoreError, VersionConflict)
