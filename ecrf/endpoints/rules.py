"""Which items and codes are the evidence of the derived endpoints: `<study dir>/endpoints.yaml`, checked
against the study (no file: no endpoints)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study_model.definitions import StudyDef

FILE = "endpoints.yaml"


class EndpointRulesError(ValueError):
    pass


@dataclass(frozen=True)
class EndpointRules:
    assessment_form: str
    assessment_status: str
    assessment_date: str
    recurrence_date: str
    recurrence_values: frozenset[str]
    no_evidence_values: frozenset[str]
    recurrence_codings: frozenset[tuple[str, str]]
    death_items: frozenset[tuple[str, str]]  # (form, item)
    patient_deceased: bool
    # Patient.deceasedBoolean true with no date anywhere: the message of its conflict and open item (None: ignored)
    deceased_without_date: str | None
    end_form: str
    end_status: str
    end_date: str
    died_values: frozenset[str]
    ae_form: str
    ae_grade: str
    fatal_grades: frozenset[int]
    ae_onset: str
    not_alive: frozenset[tuple[str, str]]
    observation_statuses: frozenset[str]
    entered_date: tuple[str, str] | None  # (form, item): day 0 of a version-1 allocation (the arm typed in)


def _section(path: Path, data: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    section = data.get(name)
    if not isinstance(section, dict) or not keys <= set(section):
        raise EndpointRulesError(f"{path}: {name} needs {', '.join(sorted(keys))}")
    return section


def _item(path: Path, study: StudyDef, form_id: Any, item_id: Any, kind: str | None = None) -> tuple[str, str]:
    try:
        item = study.form(str(form_id)).item(str(item_id))
    except KeyError as error:
        raise EndpointRulesError(f"{path}: {error.args[0]}") from None
    if kind is not None and item.type != kind:
        raise EndpointRulesError(f"{path}: {form_id}.{item_id} must be a {kind} item, not {item.type}")
    return str(form_id), str(item_id)


def _values(path: Path, study: StudyDef, form: str, item: str, values: Any) -> frozenset[str]:
    known = set(study.form(form).item(item).values or [])
    values = [str(v) for v in values or []]
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise EndpointRulesError(f"{path}: {form}.{item} has no value {', '.join(unknown) or '(none given)'}")
    return frozenset(values)


def _without_date(path: Path, section: Any) -> str | None:
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("message"), str) or not section["message"]:
        raise EndpointRulesError(f"{path}: death.patient_deceased_without_date is {{message}}")
    return section["message"]


def load_rules(directory: Path, study: StudyDef) -> EndpointRules | None:
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise EndpointRulesError(f"{path}: expected a mapping")
    da = _section(
        path,
        data,
        "disease_assessment",
        {"form", "status_item", "date_item", "recurrence_item", "recurrence_values", "no_evidence_values"},
    )
    form = str(da["form"])
    _item(path, study, form, da["status_item"], "code")
    _item(path, study, form, da["date_item"], "date")
    _item(path, study, form, da["recurrence_item"], "date")
    codings = data.get("recurrence_conditions") or []
    if not isinstance(codings, list) or not all(
        isinstance(c, dict) and c.get("system") and c.get("code") for c in codings
    ):
        raise EndpointRulesError(f"{path}: recurrence_conditions is a list of {{system, code}}")
    death = _section(path, data, "death", {"items"})
    end = _section(path, data, "end_of_study", {"form", "status_item", "end_date_item", "died_values"})
    _item(path, study, end["form"], end["status_item"], "code")
    _item(path, study, end["form"], end["end_date_item"], "date")
    ae = _section(path, data, "fatal_adverse_event", {"form", "grade_item", "fatal_grades", "onset_item"})
    _item(path, study, ae["form"], ae["grade_item"], "integer")
    _item(path, study, ae["form"], ae["onset_item"], "date")
    alive = data.get("alive") or {}
    statuses = data.get("observation_statuses")
    entered = data.get("entered_randomisation_date")
    if entered is not None and not isinstance(entered, dict):
        raise EndpointRulesError(f"{path}: entered_randomisation_date is {{form, item}}")
    if not isinstance(statuses, list) or not statuses or not all(isinstance(s, str) for s in statuses):
        raise EndpointRulesError(f"{path}: observation_statuses is a list of Observation statuses")
    return EndpointRules(
        assessment_form=form,
        assessment_status=str(da["status_item"]),
        assessment_date=str(da["date_item"]),
        recurrence_date=str(da["recurrence_item"]),
        recurrence_values=_values(path, study, form, da["status_item"], da["recurrence_values"]),
        no_evidence_values=_values(path, study, form, da["status_item"], da["no_evidence_values"]),
        recurrence_codings=frozenset((str(c["system"]), str(c["code"])) for c in codings),
        death_items=frozenset(_item(path, study, d.get("form"), d.get("item"), "date") for d in death["items"] or []),
        patient_deceased=bool(death.get("patient_deceased", True)),
        deceased_without_date=_without_date(path, death.get("patient_deceased_without_date")),
        end_form=str(end["form"]),
        end_status=str(end["status_item"]),
        end_date=str(end["end_date_item"]),
        died_values=_values(path, study, end["form"], end["status_item"], end["died_values"]),
        ae_form=str(ae["form"]),
        ae_grade=str(ae["grade_item"]),
        fatal_grades=frozenset(int(g) for g in ae["fatal_grades"]),
        ae_onset=str(ae["onset_item"]),
        not_alive=frozenset(
            _item(path, study, d.get("form"), d.get("item")) for d in alive.get("not_alive_evidence") or []
        ),
        observation_statuses=frozenset(statuses),
        entered_date=_item(path, study, entered.get("form"), entered.get("item"), "date") if entered else None,
    )
