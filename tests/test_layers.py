"""Every import points down, without exception: the layer order is data (tests/layers.toml)."""

import fnmatch
import tomllib
from collections import defaultdict
from pathlib import Path

import grimp
import pytest

LAYERS = tomllib.loads((Path(__file__).parent / "layers.toml").read_text())


def _specificity(pattern: str) -> tuple[int, int]:
    parts = pattern.split(".")
    return len(parts), -parts.count("*")


def _patterns() -> list[tuple[str, int, str]]:
    return [
        (pattern, rank, layer["name"]) for rank, layer in enumerate(LAYERS["layer"]) for pattern in layer["modules"]
    ]


PATTERNS = _patterns()


def _matches(pattern: str, module: str) -> bool:
    parts, wanted = module.split("."), pattern.split(".")
    return len(parts) >= len(wanted) and fnmatch.fnmatchcase(".".join(parts[: len(wanted)]), pattern)


def layer_of(module: str) -> tuple[int, str] | None:
    found = [(_specificity(p), rank, name) for p, rank, name in PATTERNS if _matches(p, module)]
    if not found:
        return None
    _, rank, name = max(found)
    return rank, name


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "ecrf" else ".".join(parts[:2])


@pytest.fixture(scope="module")
def imports() -> list[tuple[str, str]]:
    graph = grimp.build_graph("ecrf", "fhir_mappings", "study_model", include_external_packages=False)
    return sorted(
        (m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m) if "ecrf" not in (m, i)
    )


def test_the_layers_allow_no_exception():
    """The rules hold for every import: layers.toml lists layers only, no import let through."""
    assert set(LAYERS) == {"layer"}


def test_every_module_has_a_layer():
    graph = grimp.build_graph("ecrf", "fhir_mappings", "study_model", include_external_packages=False)
    assert sorted(m for m in graph.modules - {"ecrf"} if layer_of(m) is None) == []


def upward(imports: list[tuple[str, str]]) -> list[str]:
    return [
        f"{m} ({layer_of(m)[1]}) imports {i} ({layer_of(i)[1]})"
        for m, i in imports
        if layer_of(m) and layer_of(i) and layer_of(i)[0] > layer_of(m)[0]
    ]


def loops(imports: list[tuple[str, str]]) -> list[list[str]]:
    """Packages importing each other, counted by role: (package, layer), so crf's tables and crf's routers
    are units apart from crf's logic."""
    unit = {m: (package_of(m), layer_of(m)[1]) for pair in imports for m in pair if layer_of(m)}
    edges: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    why: dict[tuple, tuple[str, str]] = {}
    for m, i in imports:
        if m in unit and i in unit and unit[m] != unit[i]:
            edges[unit[m]].add(unit[i])
            why.setdefault((unit[m], unit[i]), (m, i))
    found = [component for component in _components(edges) if len({u[0] for u in component}) > 1]
    return [[f"{a} -> {b}: {why[(a, b)]}" for a in loop for b in sorted(edges[a]) if b in loop] for loop in found]


def mutual(imports: list[tuple[str, str]]) -> list[list[str]]:
    """Packages importing each other when a package's tables count with its logic: a domain may read another's
    table, and two domains may read each other's, but none may call into a package that reads (or calls) it.
    Routers and the other doors stay units apart, as in `loops`."""

    def unit(module: str) -> tuple[str, str] | None:
        layer = layer_of(module)
        if layer is None:
            return None
        return package_of(module), "domains" if layer[1] == "tables" and module != "ecrf.models" else layer[1]

    edges: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    calls: dict[tuple, tuple[str, str]] = {}  # an edge that is more than a read of tables, and one import behind it
    for m, i in imports:
        a, b = unit(m), unit(i)
        if a is None or b is None or a == b:
            continue
        edges[a].add(b)
        if layer_of(i)[1] != "tables":
            calls.setdefault((a, b), (m, i))
    found = []
    for component in _components(edges):
        inside = [(a, b) for a in component for b in sorted(edges[a]) if b in component and a[0] != b[0]]
        if any(edge in calls for edge in inside):
            found.append([f"{a} -> {b}: {calls.get((a, b), 'reads its tables')}" for a, b in inside])
    return found


def test_no_import_points_up(imports):
    assert upward(imports) == []


def test_no_two_packages_import_each_other(imports):
    assert loops(imports) == []


def test_no_package_calls_one_that_reads_it(imports):
    assert mutual(imports) == []


def test_the_rules_catch_an_upward_import_and_a_loop():
    """The checks above can fail: the store importing a router points up; crf and queries importing each
    other's logic is a loop; a domain reading another's table while that one calls it is not."""
    assert upward([("ecrf.store.service", "ecrf.crf.router")]) != []
    assert upward([("ecrf.crf.service", "ecrf.runtime")]) != []
    assert upward([("ecrf.crf.router", "ecrf.store.service")]) == []
    assert loops([("ecrf.crf.service", "ecrf.queries.service"), ("ecrf.queries.service", "ecrf.crf.checks")]) != []
    assert loops([("ecrf.crf.service", "ecrf.queries.counts"), ("ecrf.queries.service", "ecrf.crf.models")]) == []
    assert layer_of("ecrf.audit.access.router")[1] == "doors" and layer_of("ecrf.crf.models")[1] == "tables"


def test_the_rules_catch_a_package_calling_one_that_reads_its_tables():
    """crf counting open queries with queries' logic while queries reads crf's table is a mutual import;
    reading each other's tables is not, nor is a router calling a domain that reads the router's tables."""
    assert mutual([("ecrf.crf.service", "ecrf.queries.counts"), ("ecrf.queries.service", "ecrf.crf.models")]) != []
    assert mutual([("ecrf.crf.service", "ecrf.safety.service"), ("ecrf.safety.service", "ecrf.crf.models")]) != []
    assert mutual([("ecrf.crf.describe", "ecrf.queries.models"), ("ecrf.queries.service", "ecrf.crf.models")]) == []
    assert mutual([("ecrf.subjects.router", "ecrf.crf.service"), ("ecrf.crf.service", "ecrf.subjects.service")]) == []
    assert (
        mutual(
            [
                ("ecrf.crf.a", "ecrf.queries.b"),
                ("ecrf.queries.b", "ecrf.safety.c"),
                ("ecrf.safety.c", "ecrf.crf.models"),
            ]
        )
        != []
    )  # round a loop too


def test_the_rules_catch_the_imports_they_once_let_through():
    """The exceptions layers.toml had, each now fixed: they fail the rules again if they come back."""
    assert upward([("ecrf.export.options", "ecrf.fhir.search")]) != []
    assert upward([("ecrf.export.options", "ecrf.fhir.outcome")]) != []
    saves_through_crf = ("ecrf.randomisation.service", "ecrf.crf.service")
    assert mutual([("ecrf.crf.participation", "ecrf.randomisation.models"), saves_through_crf]) != []
    assert (
        mutual(
            [
                ("ecrf.eligibility.service", "ecrf.randomisation.models"),
                ("ecrf.randomisation.service", "ecrf.eligibility.patient_data"),
            ]
        )
        != []
    )
    assert upward([("ecrf.export.options", "ecrf.search.engine")]) == []  # where the search engine is now


def _components(edges: dict) -> list[list]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    found: list[list] = []
    counter = 0
    nodes = sorted(set(edges) | {b for targets in edges.values() for b in targets})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found
