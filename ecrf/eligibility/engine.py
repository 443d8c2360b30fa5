"""Evaluates a study's criteria (the rule language of forms/README.md) for one patient, in memory.

Nothing here knows the study: items, thresholds, windows and formulas all come from the StudyDef.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from ecrf.common.clock import latest_allowed_date
from ecrf.eligibility import expressions
from ecrf.eligibility.expressions import Derived, compare, named
from ecrf.eligibility.findings import MET, NOT_MET, UNKNOWN, Finding, all_of, any_of, negate, number_text
from ecrf.eligibility.patient_data import PatientData, Value
from ecrf.eligibility.sources import describe, evidence, missing, select_values
from ecrf.eligibility.windows import Anchors
from study_model.definitions import StudyDef, to_decimal
from study_model.rules import COMBINATORS, kind_of

ELIGIBLE, INELIGIBLE, INCOMPLETE = "eligible", "ineligible", "incomplete"
NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


@dataclass
class CriterionResult:
    id: str
    kind: str
    result: str
    reason: str
    evidence: list[dict[str, Any]]
    missing: list[dict[str, Any]]

    @property
    def blocking(self) -> bool:
        good = MET if self.kind == "inclusion" else NOT_MET
        return self.result != good

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "result": self.result,
            "evidence": self.evidence,
            "reason": self.reason,
        }


@dataclass
class Result:
    status: str
    reference_date: date
    randomised: bool
    evaluated_at: datetime
    criteria: list[CriterionResult] = field(default_factory=list)

    @property
    def missing(self) -> list[dict[str, Any]]:
        return [{"criterion": c.id, **entry} for c in self.criteria if c.result == UNKNOWN for entry in c.missing]

    @property
    def blocking(self) -> list[dict[str, Any]]:
        return [
            {"id": c.id, "kind": c.kind, "result": c.result, "reason": c.reason} for c in self.criteria if c.blocking
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "evaluated_at": self.evaluated_at.isoformat(),
            "reference_date": self.reference_date.isoformat(),
            "randomised": self.randomised,
            "criteria": [c.as_dict() for c in self.criteria],
            "missing": self.missing,
        }


def overall(criteria: list[CriterionResult]) -> str:
    """CRF-SPEC 4: any failed inclusion or applying exclusion -> ineligible; all settled -> eligible."""
    if any(
        (c.kind == "inclusion" and c.result == NOT_MET) or (c.kind == "exclusion" and c.result == MET) for c in criteria
    ):
        return INELIGIBLE
    if all(not c.blocking for c in criteria):
        return ELIGIBLE
    return INCOMPLETE


def evaluate(study: StudyDef, patient: PatientData, now: datetime | None = None, today: date | None = None) -> Result:
    """R is the reference item's value once it exists (randomised), else the evaluation day; `today` is the
    date at the subject's site (UTC when not given)."""
    now = now or datetime.now(UTC)
    reference_item = study.reference_date.item
    recorded = patient.of(reference_item)[-1].value if reference_item and patient.of(reference_item) else None
    reference = recorded if isinstance(recorded, date) else evaluation_day(patient, now, today)
    evaluation = Evaluation(study, patient, Anchors(study, patient, reference))
    criteria = [evaluation.criterion(c.id, c.kind, c.description, c.rule) for c in study.criteria]
    return Result(overall(criteria), reference, recorded is not None, now, criteria)


def evaluation_day(patient: PatientData, now: datetime, today: date | None = None) -> date:
    """R before randomisation: the day of evaluation, the date at the subject's site (`today`; the UTC date
    when not given), or the latest date the patient's own values already carry if later: values keep the dates
    they were sent with (never a date that has not begun somewhere on Earth)."""
    today, latest = today or now.astimezone(UTC).date(), latest_allowed_date(now)
    carried = [
        value.day
        for values in patient.values.values()
        for value in values
        if value.day is not None and today < value.day <= latest
    ]
    return max(carried, default=today)


@dataclass
class Evaluation:
    study: StudyDef
    patient: PatientData
    anchors: Anchors
    _derived: dict[str, Derived] = field(default_factory=dict)

    def criterion(self, criterion_id: str, kind: str, description: str, rule: dict[str, Any]) -> CriterionResult:
        finding = self.rule(rule)
        reason = "; ".join(_unique(finding.reasons)) or description
        return CriterionResult(
            criterion_id,
            kind,
            finding.outcome,
            reason,
            _unique_evidence(finding.evidence),
            _unique_missing(finding.missing) if finding.outcome == UNKNOWN else [],
        )

    def derived(self, name: str) -> Derived:
        if name not in self._derived:
            self._derived[name] = expressions.evaluate(self, self.study.derived[name])
        return self._derived[name]

    # -- rules ---------------------------------------------------------------------------------

    def rule(self, node: dict[str, Any]) -> Finding:
        kind = kind_of(node, COMBINATORS)
        if kind == "all_of":
            return all_of([self.rule(child) for child in node["all_of"]])
        if kind == "any_of":
            return any_of([self.rule(child) for child in node["any_of"]])
        if kind == "not":
            return negate(self.rule(node["not"]))
        if kind == "if":
            return self._if(node)
        if kind == "all_available":
            return self._all_available(node)
        if kind == "condition":
            return self._condition(node["condition"])
        if kind is not None:  # a kind added to the language (study_model/rules.py) must be evaluated here
            raise ValueError(f"no evaluation for rule kind {kind!r}")
        return self._leaf(node)

    def _if(self, node: dict[str, Any]) -> Finding:
        condition = self.rule(node["if"])
        if condition.outcome != UNKNOWN:
            branch = self.rule(node["then"] if condition.outcome == MET else node["else"])
            return Finding(
                branch.outcome, condition.reasons + branch.reasons, condition.evidence + branch.evidence, branch.missing
            )
        then, otherwise = self.rule(node["then"]), self.rule(node["else"])
        evidence_all = condition.evidence + then.evidence + otherwise.evidence
        if then.outcome == otherwise.outcome != UNKNOWN:
            return Finding(then.outcome, then.reasons + otherwise.reasons, evidence_all)
        return Finding(
            UNKNOWN,
            condition.reasons + then.reasons + otherwise.reasons,
            evidence_all,
            condition.missing + then.missing + otherwise.missing,
        )

    def _all_available(self, node: dict[str, Any]) -> Finding:
        findings = [self.rule(child) for child in node["all_available"]]
        available = [f for f in findings if f.outcome != UNKNOWN]
        if len(available) < node.get("min_available", 1):
            return Finding(
                UNKNOWN,
                [r for f in findings for r in f.reasons],
                [e for f in findings for e in f.evidence],
                [m for f in findings for m in f.missing],
            )
        return all_of(available)

    def _condition(self, spec: dict[str, Any]) -> Finding:
        systems = {_resolve_system_alias(self.study, system) for system in spec["systems"]}
        prefixes = tuple(spec["code_prefixes"])
        matches = [
            (condition, system, code)
            for condition in self.patient.conditions
            for system, code in condition.codings
            if system in systems and code.startswith(prefixes)
        ]
        if not matches:
            return Finding(NOT_MET, [f"no Condition coded {' / '.join(prefixes)}"])
        return Finding(
            MET,
            [f"Condition {code} ({condition.reference})" for condition, _, code in matches],
            [
                {
                    "reference": condition.reference,
                    "version": condition.version_id,
                    "code": f"{system}|{code}",
                    **({"date": condition.day.isoformat()} if condition.day else {}),
                }
                for condition, system, code in matches
            ],
        )

    # -- comparison leaves ---------------------------------------------------------------------

    def _leaf(self, node: dict[str, Any]) -> Finding:
        if "derived" in node:
            derived = self.derived(node["derived"])
            text = named(node["derived"], derived)
            if not derived.known:
                return Finding(UNKNOWN, [text], derived.evidence, derived.missing)
            outcome, relation = self._test(node, derived.value, None)
            return Finding(outcome, [_join(text, relation)], derived.evidence)
        item_id = node.get("latest", node.get("item", node.get("any")))
        selection = select_values(self.study, self.anchors, self.patient, item_id, node.get("window"))
        if not selection.values:
            return self._absent(node, item_id, selection)
        chosen = selection.values if "any" in node else [selection.latest]
        findings = []
        for value in chosen:
            outcome, relation = self._test(node, value.value, value)
            findings.append(
                Finding(
                    outcome, [_join(describe(value), relation)], [evidence(value, **self._uln_evidence(node, value))]
                )
            )
        return any_of(findings) if len(findings) > 1 else findings[0]

    def _absent(self, node: dict[str, Any], item_id: str, selection: Any) -> Finding:
        form, _ = self.study.item(item_id)
        blank = node.get("when_blank")
        if blank and selection.span.known and self.patient.form_answered_without(form.id, item_id):
            return Finding(blank, [f"{item_id} left blank on the {form.id} form"])
        entry = missing(self.study, item_id, selection, self.patient)
        return Finding(UNKNOWN, [entry["detail"]], [], [entry])

    def _test(self, node: dict[str, Any], value: Any, source: Value | None) -> tuple[str, str]:
        """The outcome of the leaf's test on a known value, and the relation for the reason."""
        if "op" in node:
            op = node["op"]
            if "uln_multiple" in node:
                uln, defaulted = self._uln(source)
                if uln is None:
                    return UNKNOWN, "no ULN"
                multiple = to_decimal(node["uln_multiple"])
                threshold = multiple * uln
                holds = compare(_decimal(value), op, threshold)
                shown = f"{number_text(multiple)} x ULN {number_text(uln)} = {number_text(threshold)}"
                return _outcome(holds), f"{op if holds else NEGATED[op]} {shown}" + (
                    " (ULN defaulted)" if defaulted else ""
                )
            threshold = to_decimal(node["value"])
            holds = compare(_decimal(value), op, threshold)
            return _outcome(holds), f"{op if holds else NEGATED[op]} {number_text(threshold)}"
        if "between" in node:
            low, high = (to_decimal(bound) for bound in node["between"])
            holds = low <= _decimal(value) <= high
            return _outcome(holds), f"{'within' if holds else 'outside'} {number_text(low)}–{number_text(high)}"
        if "equals" in node or "in" in node:
            allowed = [str(v) for v in (node["in"] if "in" in node else [node["equals"]])]
            holds = _text(value) in allowed
            return _outcome(holds), "" if holds else f"not {_alternatives(allowed)}"
        if "is" in node:
            holds = value is node["is"]
            return _outcome(holds), ""
        if "exists" in node:
            return MET, ""
        if "in_window" in node:
            span = self.anchors.span(self.study.windows[node["in_window"]])
            if not span.known or not isinstance(value, date):
                return UNKNOWN, f"window {node['in_window']} unknown"
            holds = span.contains(value)
            return _outcome(holds), f"{'within' if holds else 'outside'} {node['in_window']} {span.text()}"
        raise ValueError(f"a leaf without a test: {node!r}")

    def _uln(self, source: Value | None) -> tuple[Decimal | None, bool]:
        if source is None:
            return None, False
        if source.uln is not None:
            return source.uln, False
        default = self.study.uln_defaults.get(source.item)
        return default, default is not None

    def _uln_evidence(self, node: dict[str, Any], value: Value) -> dict[str, Any]:
        if "uln_multiple" not in node:
            return {}
        uln, defaulted = self._uln(value)
        return {"uln": number_text(uln) if uln is not None else None, "uln_defaulted": defaulted}


def _resolve_system_alias(study: StudyDef, system: str) -> str:
    if ":" in system:
        return system
    return study.code_systems.get(system, system)


def _outcome(holds: bool) -> str:
    return MET if holds else NOT_MET


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value if isinstance(value, Decimal) else to_decimal(value)


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return number_text(value)
    return str(value)


def _alternatives(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _join(text: str, relation: str) -> str:
    if not relation:
        return text
    return f"{text}, {relation}" if relation.startswith(("not", "within", "outside", "no ")) else f"{text} {relation}"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _unique_evidence(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple, dict[str, Any]] = {}
    for entry in entries:
        key = (entry.get("reference"), entry.get("version"), entry.get("item"), entry.get("code"))
        if key not in seen or (entry.get("uln") and not seen[key].get("uln")):
            seen[key] = entry
    return list(seen.values())


def _unique_missing(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple, dict[str, Any]] = {}
    for entry in entries:
        seen.setdefault((entry["item"], entry.get("detail")), entry)
    return list(seen.values())
