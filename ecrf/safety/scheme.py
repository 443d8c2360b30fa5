"""The study's SAE clock, read from `<study dir>/safety.yaml` and checked against the study (no file: no clock)."""

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml

from study_model.definitions import StudyDef

FILE = "safety.yaml"


class SafetySchemeError(ValueError):
    pass


@dataclass(frozen=True)
class SaeClock:
    form: str
    serious_item: str
    due_within: timedelta


def load_safety(directory: Path, study: StudyDef) -> SaeClock | None:
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) != {"form", "serious_item", "report_within_hours"}:
        raise SafetySchemeError(f"{path}: expected exactly form, serious_item, report_within_hours")
    try:
        form = study.form(str(data["form"]))
        item = form.item(str(data["serious_item"]))
    except KeyError as error:
        raise SafetySchemeError(f"{path}: {error.args[0]}") from None
    if not form.has_entries or item.type != "boolean":
        raise SafetySchemeError(f"{path}: {form.id} must be a log or repeating form and {item.id} a boolean item of it")
    hours = data["report_within_hours"]
    if not isinstance(hours, int) or isinstance(hours, bool) or hours <= 0:
        raise SafetySchemeError(f"{path}: report_within_hours must be a positive whole number")
    return SaeClock(form.id, item.id, timedelta(hours=hours))
