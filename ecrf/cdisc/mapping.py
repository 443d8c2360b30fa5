"""The SDTM mapping of a study, read from `forms/sdtm.yaml` (study data: a second study brings its own)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study_model.definitions import StudyDef
from ecrf.common.errors import Conflict

FILE_NAME = "sdtm.yaml"


class MappingError(Conflict, ValueError):
    """The study's SDTM mapping is missing or does not fit the study: no SDTM export can start (a conflict
    with the study as configured, answered by ecrf/errors.py)."""


@dataclass(frozen=True)
class Mapping:
    spec: dict[str, Any]

    @property
    def units(self) -> dict[str, str]:
        return self.spec.get("units") or {}

    def unit(self, ucum: str | None) -> str:
        if not ucum:
            return ""
        return self.units.get(ucum, ucum)

    @property
    def dm(self) -> dict[str, dict[str, Any]]:
        return self.spec.get("dm") or {}

    @property
    def allocation(self) -> dict[str, str]:
        """The items holding a version-1 allocation entered into the form (arm, date): read when the system
        has no allocation of the subject."""
        return self.spec.get("allocation") or {}

    @property
    def suppdm(self) -> dict[str, dict[str, Any]]:
        return self.spec.get("suppdm") or {}

    @property
    def logs(self) -> dict[str, dict[str, Any]]:
        """Domains from the entries of log forms (AE, CM): one record per entry."""
        return self.spec.get("logs") or {}

    @property
    def ie(self) -> dict[str, Any] | None:
        return self.spec.get("ie")

    @property
    def sv(self) -> bool:
        return bool(self.spec.get("sv"))

    @property
    def findings(self) -> dict[str, dict[str, Any]]:
        return self.spec.get("findings") or {}

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        return self.spec.get("events") or {}


def load_mapping(study_dir: Path, study: StudyDef) -> Mapping:
    path = Path(study_dir) / FILE_NAME
    if not path.is_file():
        raise MappingError(f"the study has no SDTM mapping ({path} is missing)")
    spec = yaml.safe_load(path.read_text()) or {}
    items = {item.id for form in study.forms for item in form.items}
    named = [rule.get("item") for rule in (spec.get("dm") or {}).values()]
    named += [rule.get(key) for rule in (spec.get("dm") or {}).values() for key in ("born", "at")]
    named += list((spec.get("allocation") or {}).values())
    keys = {"arm", "randomisation_date", "randomisation_number", "stratum"}
    wrong = sorted(
        {
            rule["allocation"]
            for section in ("dm", "suppdm")
            for rule in (spec.get(section) or {}).values()
            if "allocation" in rule and rule["allocation"] not in keys
        }
    )
    if wrong:
        raise MappingError(
            f"{path}: not a field of an allocation: {', '.join(wrong)} (one of {', '.join(sorted(keys))})"
        )
    for section in ("findings", "events"):
        for domain in (spec.get(section) or {}).values():
            for item_id, rule in (domain.get("items") or {}).items():
                named += [item_id, rule.get("uln"), rule.get("METHOD_ITEM")]
    forms = {form.id: {item.id for item in form.items} for form in study.forms}
    for domain, log in (spec.get("logs") or {}).items():
        if log.get("form") not in forms:
            raise MappingError(f"{path}: logs.{domain}.form {log.get('form')} is not a form of the study")
        own = [
            log.get("start"),
            log.get("end"),
            *(
                rule.get(key)
                for section in ("variables", "supp")
                for rule in (log.get(section) or {}).values()
                for key in ("item", "unit_of")
            ),
            (log.get("single_dose") or {}).get("item"),
        ]
        missing = sorted({name for name in own if name and name not in forms[log["form"]]})
        if missing:
            raise MappingError(f"{path}: logs.{domain}: items not in form {log['form']}: {', '.join(missing)}")
        variables = log.get("variables") or {}
        typed = sorted(
            name
            for name, rule in variables.items()
            if rule.get("type", "string") not in ("string", "integer", "double")
        )
        if typed:
            raise MappingError(f"{path}: logs.{domain}: type is string, integer or double: {', '.join(typed)}")
        dangling = sorted({rule["otherwise"] for rule in variables.values() if rule.get("otherwise")} - set(variables))
        if dangling:
            raise MappingError(
                f"{path}: logs.{domain}: `otherwise` names no variable of the domain: {', '.join(dangling)}"
            )
    visits = {visit.id for visit in study.visits}
    if (spec.get("ie") or {}).get("visit") not in (None, *visits):
        raise MappingError(f"{path}: ie.visit {spec['ie']['visit']} is not a visit of the study")
    unknown = sorted({name for name in named if name and name not in items})
    if unknown:
        raise MappingError(f"{path}: items not in the study: {', '.join(unknown)}")
    return Mapping(spec)
