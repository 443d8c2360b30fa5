"""Form definition -> FHIR R4 Questionnaire (SDC style)."""

from __future__ import annotations

from typing import Any

from fhir_mappings import fhir_constants as fhir
from study_model.definitions import FormDef, ItemDef, StudyDef

VISIT_DATE_LINK_ID = "visit_date"

_QUESTION_TYPES = {
    "date": "date",
    "integer": "integer",
    "decimal": "decimal",
    "boolean": "boolean",
    "code": "choice",
    "quantity": "quantity",
    "codes": "choice",
    "text": "text",
}


def questionnaire_id(form_id: str) -> str:
    """A FHIR id ([A-Za-z0-9-.]) for a form id: `adverse_event` is Questionnaire/adverse-event."""
    return form_id.replace("_", "-")


def form_to_questionnaire(study: StudyDef, form_id: str) -> dict[str, Any]:
    form = study.form(form_id)
    items: list[dict[str, Any]] = (
        []
        if form.date_item
        else [
            {
                "linkId": VISIT_DATE_LINK_ID,
                "text": "Visit date (defaults to the day of entry)",
                "type": "date",
                "required": False,
            }
        ]
    )
    items.extend(_question(study, form, item) for item in form.items)
    return {
        "resourceType": "Questionnaire",
        "id": questionnaire_id(form.id),  # the id it is read by: GET /fhir/Questionnaire/{id}
        "url": f"{study.canonical_base}/Questionnaire/{study.id}-{form.id}",
        "name": _name(f"{study.id}_{form.id}"),
        "title": form.title,
        "status": "active",
        "subjectType": ["Patient"],
        "item": items,
    }


def _question(study: StudyDef, form: FormDef, item: ItemDef) -> dict[str, Any]:
    question: dict[str, Any] = {"linkId": item.id, "text": item.label, "type": _QUESTION_TYPES[item.type]}
    codes = [coding.fhir() for coding in item.fhir.codes]
    if codes and item.fhir.kind in ("observation", "component", "procedure"):
        question["code"] = codes
    if item.required:
        question["required"] = True
    if item.derived is not None:
        question["readOnly"] = True
    extensions = _unit_extensions(item) + _range_extensions(item)
    if extensions:
        question["extension"] = extensions
    if item.type == "codes":
        question["repeats"] = True
    if item.type == "text":
        question["maxLength"] = item.text_limit
    if item.type in ("code", "codes"):
        question["answerOption"] = [
            {"valueCoding": study.value_coding(item, value).fhir()} for value in item.values or ()
        ]
    if item.enable_when is not None:
        question["enableWhen"] = [_enable_when(study, form, item)]
    initial = _initial(study, item)
    if initial:
        question["initial"] = [initial]
    return question


def _unit_extensions(item: ItemDef) -> list[dict[str, Any]]:
    if item.type != "quantity" or item.unit is None:
        return []
    ucum_units = [unit for unit in item.accepted_units if unit not in item.legacy_units]
    extensions = [{"url": fhir.QUESTIONNAIRE_UNIT, "valueCoding": _unit_coding(item.unit)}]
    extensions += [{"url": fhir.QUESTIONNAIRE_UNIT_OPTION, "valueCoding": _unit_coding(unit)} for unit in ucum_units]
    return extensions


def _range_extensions(item: ItemDef) -> list[dict[str, Any]]:
    if item.type not in ("integer", "decimal"):
        return []
    value_key = "valueInteger" if item.type == "integer" else "valueDecimal"
    cast = int if item.type == "integer" else (lambda number: number)
    extensions = []
    for url, bound in ((fhir.MIN_VALUE, item.hard_min), (fhir.MAX_VALUE, item.hard_max)):
        if bound is not None:
            extensions.append({"url": url, value_key: cast(bound)})
    return extensions


def _enable_when(study: StudyDef, form: FormDef, item: ItemDef) -> dict[str, Any]:
    condition = item.enable_when
    source = form.item(condition.item)
    answer: dict[str, Any]
    if source.type == "boolean":
        answer = {"answerBoolean": bool(condition.equals)}
    elif source.type == "integer":
        answer = {"answerInteger": int(condition.equals)}
    else:
        answer = {"answerCoding": study.value_coding(source, str(condition.equals)).fhir()}
    return {"question": condition.item, "operator": "=", **answer}


def _initial(study: StudyDef, item: ItemDef) -> dict[str, Any] | None:
    if item.default is None:
        return None
    if item.type == "code":
        return {"valueCoding": study.value_coding(item, str(item.default)).fhir()}
    if item.type == "quantity":
        return {"valueQuantity": {"value": item.default, "unit": item.unit, "system": fhir.UCUM, "code": item.unit}}
    if item.type == "integer":
        return {"valueInteger": int(item.default)}
    if item.type == "boolean":
        return {"valueBoolean": bool(item.default)}
    return None


def _unit_coding(unit: str) -> dict[str, str]:
    return {"system": fhir.UCUM, "code": unit, "display": unit}


def _name(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in text)
    return cleaned if cleaned[:1].isupper() else f"Q{cleaned}"
