"""Refusals that list every failing item: rendered as {"detail", "errors": [{"item", "rule", "message"}]}."""
from ecrf.store.errors import Conflict, Invalid, StoreError


class EditCheckFailed(Invalid):
    """422: hard edit checks failed; nothing was stored."""

    def __init__(self, errors: list[dict[str, str]], message: str | None = None):
        super().__init__(message or f"{len(errors)} edit check(s) failed; nothing was stored")
        self.errors = errors


class Blocked(Conflict):
    """409 with the reasons, e.g. the eligibility criteria that block a randomisation."""

    def __init__(self, message: str, errors: list[dict[str, str]]):
        super().__init__(message)
        self.errors = errors


class FormLocked(StoreError):
    """409: a write through another door would change a locked form; nothing was written."""

    status, code = 409, "business-rule"
