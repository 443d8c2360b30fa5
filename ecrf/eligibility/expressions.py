"""Value expressions of `derived:` (age, scores, formulas): exact Decimal arithmetic; unknown in, unknown out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import TYPE_CHECKING, Any

from ecrf.common.dates import age_in_years
from ecrf.eligibility.findings import MET, NOT_MET, number_text, unit_text
from ecrf.eligibility.sources import describe, evidence, missing, select_values
from study_model.definitions import to_decimal
from study_model.rules import ARITHMETIC, COMPARE, EXPRESSION_KEYS, kind_of

if TYPE_CHECKING:
    from ecrf.eligibility.engine import Evaluation

PRECISION = 50


@dataclass
class Derived:
    value: Any = None
    unit: str | None = None
    text: str = ""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.value is not None


def named(name: str, derived: Derived) -> str:
    shown = f"{name} {number_text(derived.value)}{unit_text(derived.unit)}" if derived.known else f"{name} unknown"
    return f"{shown} ({derived.text})" if derived.text else shown


def evaluate(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    kind = kind_of(node, EXPRESSION_KEYS)
    if kind is None:
        raise ValueError(f"not a value expression: {node!r}")
    return _HANDLERS[kind](evaluation, node)


def _item(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    item_id = node.get("latest", node.get("item"))
    selection = select_values(evaluation.study, evaluation.anchors, evaluation.patient, item_id, node.get("window"))
    value = selection.latest
    if value is None:
        return Derived(missing=[missing(evaluation.study, item_id, selection, evaluation.patient)])
    return Derived(value.value, value.unit, describe(value), [evidence(value)])


def _derived(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    inner = evaluation.derived(node["derived"])
    return Derived(inner.value, inner.unit, named(node["derived"], inner), inner.evidence, inner.missing)


def _anchor(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    day, absent = evaluation.anchors.resolve(node["anchor"])
    if absent:
        return Derived(missing=[missing(evaluation.study, absent, None, evaluation.patient)])
    return Derived(day, text=f"{node['anchor']} = {day.isoformat()}")


def _const(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    return Derived(to_decimal(node["const"]))


def _arithmetic(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    key = kind_of(node, ARITHMETIC)
    operands = [evaluate(evaluation, operand) for operand in node[key]]
    merged = _merge(operands)
    if not all(operand.known for operand in operands):
        return merged
    numbers = [_number(operand.value) for operand in operands]
    with localcontext() as context:
        context.prec = PRECISION
        try:
            if key == "sum":
                result = sum(numbers, Decimal(0))
            elif key == "product":
                result = numbers[0]
                for number in numbers[1:]:
                    result *= number
            elif key == "difference":
                result = numbers[0] - numbers[1]
            else:
                result = numbers[0] / numbers[1]
        except (DivisionByZero, InvalidOperation):
            merged.text = "; ".join(filter(None, [merged.text, "division by zero"]))
            return merged
    merged.value = result
    return merged


def _age(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    arguments = node["age_in_years"]
    born, at = evaluate(evaluation, arguments["born"]), evaluate(evaluation, arguments["at"])
    merged = _merge([born, at])
    if born.known and at.known and isinstance(born.value, date) and isinstance(at.value, date):
        merged.value = age_in_years(born.value, at.value)
    return merged


def _first_available(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    options = node["first_available"]
    tried: list[Derived] = []
    for index, option in enumerate(options):
        found = evaluate(evaluation, option)
        tried.append(found)
        if not found.known:
            continue
        chosen = Derived(found.value, found.unit, found.text, list(found.evidence))
        if node.get("report_conflict"):
            for other_node in options[index + 1 :]:
                other = evaluate(evaluation, other_node)
                if other.known and str(other.value) != str(found.value):
                    chosen.text = "; ".join(
                        filter(
                            None,
                            [
                                chosen.text,
                                f"conflict: {_label(other_node, other)} disagrees; "
                                f"{number_text(found.value)} (the first available) is used",
                            ],
                        )
                    )
                    chosen.evidence += other.evidence
        return chosen
    return _merge(tried)


def _label(node: dict[str, Any], derived: Derived) -> str:
    if "derived" in node:
        return derived.text
    return derived.text or number_text(derived.value)


def _bands(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    source = evaluate(evaluation, node["bands"])
    if not source.known:
        return source
    number = _number(source.value)
    for case in node["cases"]:
        if "op" not in case or compare(number, case["op"], to_decimal(case["value"])):
            return Derived(case["result"], None, f"{source.text} → {case['result']}", source.evidence)
    return Derived(None, None, f"{source.text}: no band", source.evidence)


def _map(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    source = evaluate(evaluation, node["map"])
    if not source.known:
        return source
    table = {str(key): value for key, value in node["values"].items()}
    result = table.get(str(source.value))
    return Derived(result, None, f"{source.text} → {result if result is not None else 'not mapped'}", source.evidence)


def _choose(evaluation: Evaluation, node: dict[str, Any]) -> Derived:
    seen: list[dict[str, Any]] = []
    reasons: list[str] = []
    for branch in node["choose"]:
        finding = evaluation.rule(branch["when"])
        seen += finding.evidence
        reasons += finding.reasons
        if finding.outcome == MET:
            return _chosen(evaluate(evaluation, branch["then"]), reasons, seen)
        if finding.outcome != NOT_MET:
            return Derived(None, None, "; ".join(reasons), seen, finding.missing)
    if "otherwise" not in node:
        return Derived(None, None, "no choice applies", seen)
    return _chosen(evaluate(evaluation, node["otherwise"]), reasons, seen)


def _chosen(chosen: Derived, reasons: list[str], seen: list[dict[str, Any]]) -> Derived:
    chosen.text = f"{'; '.join(reasons)} → {chosen.text or number_text(chosen.value)}"
    chosen.evidence = seen + chosen.evidence
    return chosen


def _merge(parts: list[Derived]) -> Derived:
    return Derived(
        None,
        None,
        "; ".join(part.text for part in parts if part.text),
        [entry for part in parts for entry in part.evidence],
        [entry for part in parts if not part.known for entry in part.missing],
    )


def _number(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, Decimal):
        return value
    return to_decimal(value)


def compare(number: Decimal, op: str, threshold: Decimal) -> bool:
    return COMPARE[op](number, threshold)


# One evaluator for each kind of value expression the rule language declares (EXPRESSION_KEYS).
_HANDLERS = {
    "item": _item,
    "latest": _item,
    "derived": _derived,
    "anchor": _anchor,
    "const": _const,
    **dict.fromkeys(ARITHMETIC, _arithmetic),
    "age_in_years": _age,
    "first_available": _first_available,
    "bands": _bands,
    "map": _map,
    "choose": _choose,
}
if set(_HANDLERS) != set(EXPRESSION_KEYS):  # a kind added to the language must be given its evaluator here
    raise ImportError(f"value expression kinds without an evaluator: {set(EXPRESSION_KEYS) ^ set(_HANDLERS)}")
