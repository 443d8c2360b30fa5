"""Grammar of the declarative eligibility rule language, and its static validation.

The language is documented in forms/README.md. This module checks that a criteria file is well
formed and that every item, derived value, window and anchor it names exists; it does not
evaluate rules (the eligibility engine does, with three-valued logic).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from study_model.definitions import FormDef, ItemDef, StudyDef, to_decimal

Path = tuple[str | int, ...]

# The kinds of node of the language, declared once: the validation below and the evaluators
# (ecrf/eligibility/engine.py and expressions.py, study_model/derivation.py) dispatch on these.
COMBINATORS = ("all_of", "any_of", "not", "if", "all_available", "condition")  # rule nodes; else a leaf
ITEM_SOURCES = ("item", "latest", "any")
LEAF_SOURCES = ITEM_SOURCES + ("derived",)
TESTS = ("op", "equals", "in", "is", "between", "exists", "in_window")
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
COMPARISONS = tuple(COMPARE)
BLANK_OUTCOMES = ("met", "not_met", "unknown")
NUMERIC_TYPES = ("integer", "decimal", "quantity")
ARITHMETIC = ("sum", "difference", "product", "quotient")
EXPRESSION_KEYS = (
    ("item", "latest", "derived", "anchor", "const")
    + ARITHMETIC
    + ("age_in_years", "first_available", "bands", "map", "choose")
)  # value expression nodes (`derived:`)

_BOUND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:([+-])\s*(\d+)\s*d)?\s*$")


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str


@dataclass(frozen=True)
class AnchorBound:
    anchor: str  # the reference-date name or a date item id
    days: int  # offset in days


def kind_of(node: dict[str, Any], kinds: Iterable[str]) -> str | None:
    """The first of `kinds` that `node` names (a validated node names exactly one), or None."""
    return next((kind for kind in kinds if kind in node), None)


def parse_bound(text: str) -> AnchorBound | None:
    """'R - 14d' -> AnchorBound('R', -14); 'surgery_date' -> AnchorBound('surgery_date', 0)."""
    match = _BOUND.match(text) if isinstance(text, str) else None
    if not match:
        return None
    anchor, sign, days = match.groups()
    offset = int(days or 0) * (-1 if sign == "-" else 1)
    return AnchorBound(anchor=anchor, days=offset)


@dataclass
class RuleContext:
    """What a criteria file may refer to."""

    study: StudyDef
    reference_name: str
    windows: dict[str, Any]
    derived: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def item(self, item_id: Any, path: Path) -> ItemDef | None:
        if not isinstance(item_id, str):
            self.add(path, f"unknown item {item_id!r}")
            return None
        try:
            return self.study.item(item_id)[1]
        except KeyError as error:
            known = f"unknown item {item_id!r}"
            self.add(path, known if "has no item" in str(error) else str(error).strip("'\""))
            return None


def validate_criteria_file(study: StudyDef, data: dict[str, Any]) -> list[Problem]:
    """All problems of a parsed criteria file (paths are relative to the file's root)."""
    reference = data.get("reference_date") or {}
    reference_name = reference.get("name", "R") if isinstance(reference, dict) else "R"
    context = RuleContext(
        study=study, reference_name=reference_name, windows=data.get("windows") or {}, derived=data.get("derived") or {}
    )
    if isinstance(reference, dict) and "item" in reference:
        _expect_date_item(context, reference["item"], ("reference_date", "item"))
    for name, window in context.windows.items():
        _check_window(context, window, ("windows", name))
    default_window = data.get("default_window")
    if default_window is not None and default_window not in context.windows:
        context.add(("default_window",), f"unknown window {default_window!r}")
    for name, expression in context.derived.items():
        _check_expression(context, expression, ("derived", name))
    _check_derived_cycles(context)
    seen: dict[str, int] = {}
    for index, criterion in enumerate(data.get("criteria") or []):
        path: Path = ("criteria", index)
        if not isinstance(criterion, dict):
            context.add(path, "a criterion is a mapping with id, kind, description, rule")
            continue
        criterion_id = criterion.get("id")
        if criterion_id in seen:
            context.add(
                path + ("id",), f"duplicate criterion id {criterion_id!r} (first at criteria[{seen[criterion_id]}])"
            )
        elif isinstance(criterion_id, str):
            seen[criterion_id] = index
        if "rule" not in criterion:
            context.add(path, "a criterion needs a rule")
        else:
            _check_condition(context, criterion["rule"], path + ("rule",))
    return context.problems


def validate_form_condition(form: FormDef, condition: Any, path: Path) -> list[Problem]:
    """A derived item's `when`: same-form items only, {item, per?, op|equals|in|is}, all_of, any_of."""
    problems: list[Problem] = []
    item_ids = {item.id for item in form.items}

    def check(node: Any, where: Path) -> None:
        if not isinstance(node, dict):
            problems.append(Problem(where, "a condition is a mapping"))
            return
        for key in ("all_of", "any_of"):
            if key in node:
                for index, child in enumerate(node[key] or []):
                    check(child, where + (key, index))
                return
        if node.get("item") not in item_ids:
            problems.append(Problem(where + ("item",), f"unknown item {node.get('item')!r} in form {form.id!r}"))
        per = node.get("per")
        if per is not None and (not isinstance(per, dict) or per.get("item") not in item_ids):
            problems.append(Problem(where + ("per",), "per needs {item: <item of this form>, amount}"))
        if not any(key in node for key in ("op", "equals", "in", "is")):
            problems.append(Problem(where, "a condition needs op, equals, in or is"))
        if "op" in node and node["op"] not in COMPARISONS:
            problems.append(Problem(where + ("op",), f"unknown operator {node['op']!r}"))

    check(condition, path)
    return problems


def _check_condition(context: RuleContext, node: Any, path: Path) -> None:
    if not isinstance(node, dict) or not node:
        context.add(path, "a rule is a non-empty mapping")
        return
    keys = set(node) - {"note"}
    if "all_of" in keys or "any_of" in keys:
        key = "all_of" if "all_of" in keys else "any_of"
        _expect_only(context, node, path, {key})
        _check_condition_list(context, node[key], path + (key,))
    elif "not" in keys:
        _expect_only(context, node, path, {"not"})
        _check_condition(context, node["not"], path + ("not",))
    elif "if" in keys:
        _expect_only(context, node, path, {"if", "then", "else"})
        for key in ("if", "then", "else"):
            if key not in node:
                context.add(path, f"an if rule needs `{key}`")
            else:
                _check_condition(context, node[key], path + (key,))
    elif "all_available" in keys:
        _expect_only(context, node, path, {"all_available", "min_available"})
        _check_condition_list(context, node["all_available"], path + ("all_available",))
        minimum = node.get("min_available", 1)
        if not isinstance(minimum, int) or minimum < 0:
            context.add(path + ("min_available",), "min_available is a non-negative integer")
    elif "condition" in keys:
        _expect_only(context, node, path, {"condition"})
        _check_code_match(context, node["condition"], path + ("condition",))
    else:
        _check_leaf(context, node, path)


def _check_condition_list(context: RuleContext, nodes: Any, path: Path) -> None:
    if not isinstance(nodes, list) or not nodes:
        context.add(path, "expected a non-empty list of rules")
        return
    for index, child in enumerate(nodes):
        _check_condition(context, child, path + (index,))


def _check_code_match(context: RuleContext, node: Any, path: Path) -> None:
    if not isinstance(node, dict) or not node.get("code_prefixes") or not node.get("systems"):
        context.add(path, "condition needs systems and code_prefixes")
        return
    for index, system in enumerate(node["systems"]):
        if ":" not in str(system) and system not in context.study.code_systems:
            context.add(path + ("systems", index), f"unknown code system alias {system!r}")


def _check_leaf(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    sources = [key for key in LEAF_SOURCES if key in node]
    tests = [key for key in TESTS if key in node]
    allowed = set(LEAF_SOURCES) | set(TESTS) | {"value", "uln_multiple", "window", "when_blank", "note"}
    for key in node:
        if key not in allowed:
            context.add(
                path + (key,),
                f"unknown rule key {key!r} (rules are all_of, any_of, not, "
                f"if, all_available, condition or a comparison leaf)",
            )
    if len(sources) != 1:
        context.add(path, f"a comparison names exactly one of {', '.join(LEAF_SOURCES)}")
        return
    if len(tests) != 1:
        context.add(path, f"a comparison has exactly one test of {', '.join(TESTS)}")
        return
    source, test = sources[0], tests[0]
    item: ItemDef | None = None
    if source == "derived":
        _expect_derived(context, node["derived"], path + ("derived",))
        if "window" in node:
            context.add(path + ("window",), "a derived value carries its own windows")
    else:
        item = context.item(node[source], path + (source,))
    if "window" in node and node["window"] not in context.windows:
        context.add(path + ("window",), f"unknown window {node['window']!r}")
    if "when_blank" in node and node["when_blank"] not in BLANK_OUTCOMES:
        context.add(path + ("when_blank",), f"when_blank is one of {', '.join(BLANK_OUTCOMES)}")
    _check_test(context, node, path, test, item)


def _check_test(context: RuleContext, node: dict[str, Any], path: Path, test: str, item: ItemDef | None) -> None:
    if test == "op":
        if node["op"] not in COMPARISONS:
            context.add(path + ("op",), f"unknown operator {node['op']!r}")
        if ("value" in node) == ("uln_multiple" in node):
            context.add(path, "op needs exactly one of value, uln_multiple")
        if item is not None and item.type not in NUMERIC_TYPES:
            context.add(path + ("op",), f"item {item.id!r} is {item.type}, not numeric")
        if "uln_multiple" in node and item is not None and not _has_uln(context.study, item):
            context.add(
                path + ("uln_multiple",), f"item {item.id!r} has neither a reference_range_high item nor a ULN default"
            )
        for key in ("value", "uln_multiple"):
            if key in node:
                _expect_number(context, node[key], path + (key,))
    elif test == "between":
        bounds = node["between"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            context.add(path + ("between",), "between is [low, high] (inclusive)")
        else:
            for index, bound in enumerate(bounds):
                _expect_number(context, bound, path + ("between", index))
    elif test in ("equals", "in"):
        values = node[test] if test == "in" else [node[test]]
        if not isinstance(values, list) or not values:
            context.add(path + (test,), "in is a non-empty list")
        elif item is not None and item.values:
            for index, value in enumerate(values):
                if str(value) not in item.values:
                    where = path + ((test, index) if test == "in" else (test,))
                    context.add(where, f"{value!r} is not a value of item {item.id!r} ({', '.join(item.values)})")
    elif test == "is":
        if not isinstance(node["is"], bool):
            context.add(path + ("is",), "is takes true or false")
        if item is not None and item.type != "boolean":
            context.add(path + ("is",), f"item {item.id!r} is {item.type}, not boolean")
    elif test == "exists":
        if node["exists"] is not True:
            context.add(path + ("exists",), "exists takes true (absence is never proof)")
    elif test == "in_window":
        if node["in_window"] not in context.windows:
            context.add(path + ("in_window",), f"unknown window {node['in_window']!r}")
        if item is not None and item.type != "date":
            context.add(path + ("in_window",), f"item {item.id!r} is {item.type}, not a date")


def _check_expression(context: RuleContext, node: Any, path: Path) -> None:
    if not isinstance(node, dict):
        context.add(path, "a value expression is a mapping")
        return
    keys = [key for key in EXPRESSION_KEYS if key in node]
    if len(keys) != 1:
        context.add(path, f"a value expression has exactly one of {', '.join(EXPRESSION_KEYS)}")
        return
    key = keys[0]
    handler = _EXPRESSION_CHECKS[key]
    handler(context, node, path)


def _expr_item(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    source = "item" if "item" in node else "latest"
    _expect_only(context, node, path, {source, "window"})
    context.item(node[source], path + (source,))
    if "window" in node and node["window"] not in context.windows:
        context.add(path + ("window",), f"unknown window {node['window']!r}")


def _expr_derived(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"derived"})
    _expect_derived(context, node["derived"], path + ("derived",))


def _expr_anchor(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"anchor"})
    _check_bound(context, node["anchor"], path + ("anchor",))


def _expr_const(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"const"})
    _expect_number(context, node["const"], path + ("const",))


def _expr_arithmetic(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    key = kind_of(node, ARITHMETIC)
    _expect_only(context, node, path, {key})
    operands = node[key]
    two_only = key in ("difference", "quotient")
    if not isinstance(operands, list) or len(operands) < 2 or (two_only and len(operands) != 2):
        context.add(path + (key,), f"{key} takes {'two' if two_only else 'two or more'} operands")
        return
    for index, operand in enumerate(operands):
        _check_expression(context, operand, path + (key, index))


def _expr_age(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"age_in_years"})
    arguments = node["age_in_years"]
    if not isinstance(arguments, dict) or set(arguments) != {"born", "at"}:
        context.add(path + ("age_in_years",), "age_in_years takes {born: <expr>, at: <expr>}")
        return
    for key in ("born", "at"):
        _check_expression(context, arguments[key], path + ("age_in_years", key))


def _expr_first_available(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"first_available", "report_conflict"})
    options = node["first_available"]
    if not isinstance(options, list) or not options:
        context.add(path + ("first_available",), "first_available takes a non-empty list")
        return
    for index, option in enumerate(options):
        _check_expression(context, option, path + ("first_available", index))


def _expr_bands(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"bands", "cases"})
    _check_expression(context, node["bands"], path + ("bands",))
    cases = node.get("cases")
    if not isinstance(cases, list) or not cases:
        context.add(path, "bands needs a non-empty list of cases")
        return
    for index, case in enumerate(cases):
        where = path + ("cases", index)
        if not isinstance(case, dict) or "result" not in case:
            context.add(where, "a case is {op, value, result} or a final {result}")
            continue
        if "op" in case:
            if case["op"] not in COMPARISONS:
                context.add(where + ("op",), f"unknown operator {case['op']!r}")
            _expect_number(context, case.get("value"), where + ("value",))
        elif index != len(cases) - 1:
            context.add(where, "only the last case may omit op")


def _expr_map(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"map", "values"})
    _check_expression(context, node["map"], path + ("map",))
    if not isinstance(node.get("values"), dict) or not node["values"]:
        context.add(path, "map needs values: {input value: result}")
        return
    source = node["map"] if isinstance(node["map"], dict) else {}
    item_id = source.get("latest", source.get("item"))
    if isinstance(item_id, str) and context.study.has_item(item_id):
        item = context.study.item(item_id)[1]
        for value in node["values"]:
            if item.values and str(value) not in item.values:
                context.add(path + ("values", value), f"{value!r} is not a value of {item_id!r}")


def _expr_choose(context: RuleContext, node: dict[str, Any], path: Path) -> None:
    _expect_only(context, node, path, {"choose", "otherwise"})
    branches = node["choose"]
    if not isinstance(branches, list) or not branches:
        context.add(path + ("choose",), "choose takes a list of {when: <rule>, then: <expr>}")
        return
    for index, branch in enumerate(branches):
        where = path + ("choose", index)
        if not isinstance(branch, dict) or set(branch) != {"when", "then"}:
            context.add(where, "a choice is {when: <rule>, then: <expr>}")
            continue
        _check_condition(context, branch["when"], where + ("when",))
        _check_expression(context, branch["then"], where + ("then",))
    if "otherwise" in node:
        _check_expression(context, node["otherwise"], path + ("otherwise",))


_EXPRESSION_CHECKS: dict[str, Callable[[RuleContext, dict[str, Any], Path], None]] = {
    "item": _expr_item,
    "latest": _expr_item,
    "derived": _expr_derived,
    "anchor": _expr_anchor,
    "const": _expr_const,
    "sum": _expr_arithmetic,
    "difference": _expr_arithmetic,
    "product": _expr_arithmetic,
    "quotient": _expr_arithmetic,
    "age_in_years": _expr_age,
    "first_available": _expr_first_available,
    "bands": _expr_bands,
    "map": _expr_map,
    "choose": _expr_choose,
}


def _check_window(context: RuleContext, window: Any, path: Path) -> None:
    if not isinstance(window, dict) or not window:
        context.add(path, "a window is {on_or_after: [bounds], on_or_before: [bounds]}")
        return
    for key, bounds in window.items():
        if key not in ("on_or_after", "on_or_before"):
            context.add(path + (key,), f"unknown window key {key!r}")
            continue
        if not isinstance(bounds, list) or not bounds:
            context.add(path + (key,), "expected a non-empty list of bounds")
            continue
        for index, bound in enumerate(bounds):
            _check_bound(context, bound, path + (key, index))


def _check_bound(context: RuleContext, text: Any, path: Path) -> None:
    bound = parse_bound(text)
    if bound is None:
        context.add(path, f"a date bound is '<anchor>', '<anchor> + Nd' or '<anchor> - Nd', got {text!r}")
    elif bound.anchor != context.reference_name:
        _expect_date_item(context, bound.anchor, path)


def _expect_date_item(context: RuleContext, item_id: Any, path: Path) -> None:
    item = context.item(item_id, path)
    if item is not None and item.type != "date":
        context.add(path, f"anchor item {item_id!r} is {item.type}, not a date")


def _expect_derived(context: RuleContext, name: Any, path: Path) -> None:
    if name not in context.derived:
        context.add(path, f"unknown derived value {name!r}")


def _expect_number(context: RuleContext, value: Any, path: Path) -> None:
    try:
        to_decimal(value)
    except ValueError:
        context.add(path, f"expected a number, got {value!r}")


def _expect_only(context: RuleContext, node: dict[str, Any], path: Path, allowed: Iterable[str]) -> None:
    permitted = set(allowed) | {"note"}
    for key in node:
        if key not in permitted:
            context.add(path + (key,), f"unexpected key {key!r} here")


def _has_uln(study: StudyDef, item: ItemDef) -> bool:
    return item.id in study.uln_defaults or study.uln_item_of(item.id) is not None


def _derived_references(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "derived" and isinstance(value, str):
                yield value
            else:
                yield from _derived_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _derived_references(value)


def _check_derived_cycles(context: RuleContext) -> None:
    graph = {name: set(_derived_references(expression)) for name, expression in context.derived.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done" or name not in graph:
            return
        if state.get(name) == "active":
            cycle = " -> ".join(trail[trail.index(name) :] + [name])
            context.add(("derived", name), f"derived values refer to each other in a cycle: {cycle}")
            return
        state[name] = "active"
        for successor in sorted(graph[name]):
            visit(successor, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])
