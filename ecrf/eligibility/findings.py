"""Three-valued (Kleene) findings: an outcome with the reasons, evidence and missing data behind it."""

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

MET, NOT_MET, UNKNOWN = "met", "not_met", "unknown"
SWAP = {MET: NOT_MET, NOT_MET: MET, UNKNOWN: UNKNOWN}


@dataclass
class Finding:
    outcome: str
    reasons: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)


def all_of(findings: list[Finding]) -> Finding:
    return _combine(findings, decisive=NOT_MET, otherwise=MET)


def any_of(findings: list[Finding]) -> Finding:
    return _combine(findings, decisive=MET, otherwise=NOT_MET)


def _combine(findings: list[Finding], *, decisive: str, otherwise: str) -> Finding:
    outcome = (
        decisive
        if any(f.outcome == decisive for f in findings)
        else (UNKNOWN if any(f.outcome == UNKNOWN for f in findings) else otherwise)
    )
    chosen = [f for f in findings if f.outcome == outcome]
    return Finding(
        outcome,
        reasons=[reason for f in chosen for reason in f.reasons],
        evidence=[evidence for f in findings for evidence in f.evidence],
        missing=[missing for f in chosen for missing in f.missing] if outcome == UNKNOWN else [],
    )


def negate(finding: Finding) -> Finding:
    return Finding(SWAP[finding.outcome], finding.reasons, finding.evidence, finding.missing)


def number_text(value: Any) -> str:
    """Exact digits without exponent or trailing zeros; long quotients shown to 2 decimals with ≈."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return format(value.quantize(Decimal(1)), "f")
        normal = value.normalize()
        if -normal.as_tuple().exponent > 6:
            return "≈" + format(value.quantize(Decimal("0.01")), "f")
        return format(normal, "f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def unit_text(unit: str | None) -> str:
    return f" {unit}" if unit and not (unit.startswith("{") and unit.endswith("}")) else ""
