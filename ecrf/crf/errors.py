"""The refusals that list every failing item live in ecrf/common/errors.py (kept so imports of the old
path still work)."""
from ecrf.common.errors import Blocked, EditCheckFailed, FormLocked  # noqa: F401
