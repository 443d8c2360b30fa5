"""Load and validate a study definition directory (study.yaml, forms/*.yaml, criteria.yaml).

Every problem is reported with the file, the line and the key path it concerns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from study_model.definitions import (
    ENTRY_DATE,
    ITEM_TYPES,
    SUBJECT_PREFIX,
    CriterionDef,
    FormDef,
    ItemDef,
    ReferenceDateDef,
    StudyDef,
    SubjectCheck,
    SubjectFact,
    WindowDef,
    condition_items,
)
from study_model.rules import validate_criteria_file, validate_form_condition
from study_model.ucum import is_ucum_like

STUDY_FILE = "study.yaml"
CRITERIA_FILE = "criteria.yaml"
SUBJECT_CHECKS_FILE = "subject_checks.yaml"  # cross-form checks: an entry against the subject's facts
FORMS_FOLDER = "forms"
RESERVED_ITEM_IDS = frozenset({"visit_date"})

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    file: Path
    line: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.key_path or '<root>'}: {self.message}"


class StudyDefinitionError(Exception):
    """The study definition is invalid; `issues` lists every problem found (file, line, key)."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        summary = "\n".join(str(issue) for issue in issues)
        super().__init__(f"invalid study definition ({len(issues)} problem(s)):\n{summary}")


def default_study_dir() -> Path:
    """The repository's forms/ directory (the service may override it with a setting)."""
    return Path(__file__).resolve().parents[1] / "forms"


def load_study(directory: Path) -> StudyDef:
    return _StudyLoader(Path(directory)).load()


class _YamlDocument:
    """A parsed YAML file with the position of every key and list entry."""

    def __init__(self, file: Path, data: Any, marks: dict[Path_, int]) -> None:
        self.file = file
        self.data = data
        self.marks = marks

    def line_of(self, path: Path_) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.marks:
                return self.marks[path[:end]]
        return None

    def issue(self, path: Path_, message: str) -> Issue:
        return Issue(self.file, self.line_of(path), format_key_path(path), message)


def format_key_path(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_yaml(file: Path) -> _YamlDocument:
    """Parse `file`, keeping line numbers; duplicate keys and malformed YAML raise an Issue."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise StudyDefinitionError([Issue(file, None, "", f"cannot read: {error}")]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        marks: dict[Path_, int] = {}
        data = _construct(loader, root, (), marks, file) if root is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        raise StudyDefinitionError([Issue(file, line, "", f"malformed YAML: {error.problem or error}")]) from None
    except yaml.YAMLError as error:
        raise StudyDefinitionError([Issue(file, None, "", f"malformed YAML: {error}")]) from None
    finally:
        loader.dispose()
    return _YamlDocument(file, data, marks)


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, marks: dict[Path_, int], file: Path) -> Any:
    marks.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key == "<<":
                raise StudyDefinitionError(
                    [Issue(file, key_node.start_mark.line + 1, format_key_path(path), "merge keys are not supported")]
                )
            if key in result:
                raise StudyDefinitionError(
                    [
                        Issue(
                            file, key_node.start_mark.line + 1, format_key_path(path + (key,)), f"duplicate key {key!r}"
                        )
                    ]
                )
            marks[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _construct(loader, value_node, path + (key,), marks, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, child, path + (index,), marks, file) for index, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


class _StudyLoader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.issues: list[Issue] = []

    def load(self) -> StudyDef:
        if not self.directory.is_dir():
            raise StudyDefinitionError([Issue(self.directory, None, "", "not a directory")])
        study_doc = read_yaml(self.directory / STUDY_FILE)
        header = study_doc.data if isinstance(study_doc.data, dict) else {}
        if not isinstance(study_doc.data, dict):
            self._fail([study_doc.issue((), "expected a mapping")])
        context = self._context(study_doc)
        form_docs = self._read_form_files(study_doc)
        forms = [self._validate(doc, FormDef, doc.data, context, ()) for doc in form_docs]
        self._raise_if_any()

        study_fields = {key: value for key, value in header.items() if key != "forms"}
        study = self._validate(study_doc, StudyDef, {**study_fields, "forms": forms}, context, ())
        self._raise_if_any()
        self._check_study(study_doc, study)
        for doc, form in zip(form_docs, forms):
            self._check_form(doc, form, study)
        self._raise_if_any()

        study = self._with_criteria(study, context)
        self._raise_if_any()
        study = self._with_subject_checks(study, context)
        self._raise_if_any()
        return study

    def _context(self, study_doc: _YamlDocument) -> dict[str, Any]:
        header = study_doc.data
        systems = header.get("code_systems") or {}
        if not isinstance(systems, dict):
            self._fail([study_doc.issue(("code_systems",), "expected a mapping alias: uri")])
        local = header.get("local_system")
        if not isinstance(local, str):
            self._fail([study_doc.issue(("local_system",), "the local code system URI is required")])
        return {"code_systems": {**systems, "LOCAL": local}}

    def _read_form_files(self, study_doc: _YamlDocument) -> list[_YamlDocument]:
        form_ids = study_doc.data.get("forms")
        if not isinstance(form_ids, list) or not form_ids:
            self._fail([study_doc.issue(("forms",), "list the form ids (files forms/<id>.yaml)")])
        folder = self.directory / FORMS_FOLDER
        docs: list[_YamlDocument] = []
        seen: dict[str, int] = {}
        for index, form_id in enumerate(form_ids):
            if form_id in seen:
                self.issues.append(
                    study_doc.issue(("forms", index), f"duplicate form id {form_id!r} (also forms[{seen[form_id]}])")
                )
                continue
            seen[str(form_id)] = index
            file = folder / f"{form_id}.yaml"
            if not file.is_file():
                self.issues.append(study_doc.issue(("forms", index), f"form file {file} not found"))
                continue
            doc = read_yaml(file)
            if not isinstance(doc.data, dict):
                self.issues.append(doc.issue((), "a form file is a mapping"))
                continue
            if doc.data.get("id") != form_id:
                self.issues.append(
                    doc.issue(("id",), f"form id {doc.data.get('id')!r} does not match its file name {form_id!r}")
                )
            self._precheck_items(doc)
            docs.append(doc)
        for file in sorted(folder.glob("*.y*ml")):
            if file.stem not in seen:
                self.issues.append(Issue(file, None, "", f"form file is not listed under `forms` in {STUDY_FILE}"))
        self._raise_if_any()
        return docs

    def _precheck_items(self, doc: _YamlDocument) -> None:
        """Checks that need the exact key (units, types) before the model sees the data."""
        items = doc.data.get("items")
        if not isinstance(items, list):
            self.issues.append(doc.issue(("items",), "a form needs a list of items"))
            return
        for index, raw in enumerate(items):
            if not isinstance(raw, dict):
                continue
            path: Path_ = ("items", index)
            if raw.get("type") not in ITEM_TYPES:
                self.issues.append(
                    doc.issue(
                        path + ("type",), f"unknown item type {raw.get('type')!r} (one of {', '.join(ITEM_TYPES)})"
                    )
                )
            if raw.get("id") in RESERVED_ITEM_IDS:
                self.issues.append(doc.issue(path + ("id",), f"item id {raw['id']!r} is reserved"))
            unit = raw.get("unit")
            if unit is not None and not is_ucum_like(str(unit)):
                self.issues.append(doc.issue(path + ("unit",), f"unit {unit!r} is not a UCUM code"))
            for key in ("accepted_units",):
                for unit_code in (raw.get(key) or {}) if isinstance(raw.get(key), dict) else {}:
                    if not is_ucum_like(str(unit_code)):
                        self.issues.append(
                            doc.issue(
                                path + (key, unit_code),
                                f"accepted unit {unit_code!r} is not a UCUM code "
                                f"(declare free-text spellings under legacy_units)",
                            )
                        )
            legacy = raw.get("legacy_units")
            if isinstance(legacy, dict):
                self._check_legacy_spellings(doc, path, raw, legacy)

    def _check_legacy_spellings(
        self, doc: _YamlDocument, path: Path_, raw: dict[str, Any], legacy: dict[str, Any]
    ) -> None:
        known = {str(raw.get("unit"))} | set(map(str, (raw.get("accepted_units") or {})))
        for spelling, ucum in legacy.items():
            if str(ucum) not in known:
                self.issues.append(
                    doc.issue(
                        path + ("legacy_units", spelling),
                        f"legacy unit {spelling!r} stands for {ucum!r}, which "
                        f"is neither the canonical unit nor an accepted unit",
                    )
                )

    def _validate(
        self, doc: _YamlDocument, model: type[BaseModel], data: Any, context: dict[str, Any], prefix: Path_
    ) -> Any:
        try:
            return model.model_validate(data, context=context)
        except ValidationError as error:
            for detail in error.errors():
                loc = prefix + tuple(part for part in detail["loc"] if not _is_pydantic_tag(part))
                message = detail["msg"].removeprefix("Value error, ")
                self.issues.append(doc.issue(loc, message))
            return None

    def _check_study(self, doc: _YamlDocument, study: StudyDef) -> None:
        for key, entries in (("sites", study.sites), ("arms", study.arms), ("visits", study.visits)):
            self._duplicates(doc, key, [entry.id for entry in entries])
        for item_id in study.uln_defaults:
            if not study.has_item(item_id):
                self.issues.append(doc.issue(("uln_defaults", item_id), f"unknown item {item_id!r}"))
            elif study.item(item_id)[1].type != "quantity":
                self.issues.append(doc.issue(("uln_defaults", item_id), f"item {item_id!r} is not a quantity"))
        self._check_kept_types(doc, study)
        if study.day_zero_item is not None:
            if not study.has_item(study.day_zero_item):
                self.issues.append(doc.issue(("day_zero_item",), f"unknown item {study.day_zero_item!r}"))
            elif study.item(study.day_zero_item)[1].type != "date":
                self.issues.append(doc.issue(("day_zero_item",), "day_zero_item must be a date item"))

    def _check_kept_types(self, doc: _YamlDocument, study: StudyDef) -> None:
        """kept_resource_types, when given: R4 resource types, once each, Patient and ResearchSubject among them."""
        from fhir.resources.R4B import get_fhir_model_class
        from fhir.resources.R4B.resource import Resource

        if not study.kept_resource_types:
            return  # a study that keeps no FHIR types of its own: the door's defaults are not its business
        for index, name in enumerate(study.kept_resource_types):
            if name in study.kept_resource_types[:index]:
                self.issues.append(doc.issue(("kept_resource_types", index), f"{name!r} is listed twice"))
            try:
                known = issubclass(get_fhir_model_class(name), Resource) and name != "Bundle"
            except (KeyError, ValueError, AttributeError, ImportError):
                known = False
            if not known:
                self.issues.append(
                    doc.issue(("kept_resource_types", index), f"{name!r} is not an R4 resource type that can be kept")
                )
        for needed in ("Patient", "ResearchSubject"):
            if needed not in study.kept_resource_types:
                self.issues.append(doc.issue(("kept_resource_types",), f"the study must keep {needed}"))

    def _check_form(self, doc: _YamlDocument, form: FormDef, study: StudyDef) -> None:
        visit_ids = {visit.id for visit in study.visits}
        for index, visit_id in enumerate(form.visits):
            if visit_id not in visit_ids:
                self.issues.append(doc.issue(("visits", index), f"unknown visit {visit_id!r}"))
        self._duplicates(doc, "items", [item.id for item in form.items])
        by_id = {item.id: item for item in form.items}
        if form.date_item is not None and getattr(by_id.get(form.date_item), "type", None) != "date":
            self.issues.append(
                doc.issue(("date_item",), f"date_item {form.date_item!r} is not a date item of this form")
            )
        for index, item in enumerate(form.items):
            path: Path_ = ("items", index)
            if item.enable_when is not None and item.enable_when.item not in by_id:
                self.issues.append(
                    doc.issue(
                        path + ("enable_when", "item"),
                        f"enable_when names unknown item {item.enable_when.item!r} "
                        f"(it must be an item of form {form.id!r})",
                    )
                )
            if item.fhir.of is not None:
                self._check_owner(doc, path, item, by_id.get(item.fhir.of))
            if item.derived is not None:
                for case_index, case in enumerate(item.derived.cases):
                    for problem in validate_form_condition(
                        form, case.when, path + ("derived", "cases", case_index, "when")
                    ):
                        self.issues.append(doc.issue(problem.path, problem.message))
            unknown = sorted(set(item.fhir.resource_type_by_value) - set(item.values or ()))
            if unknown:
                self.issues.append(
                    doc.issue(
                        path + ("fhir", "resource_type_by_value"),
                        f"{', '.join(map(repr, unknown))} not among the item's values",
                    )
                )
            if item.fhir.kind == "research_subject" and item.fhir.path == "assignedArm":
                arm_ids = {arm.id for arm in study.arms}
                for value in item.values or ():
                    if value not in arm_ids:
                        self.issues.append(doc.issue(path + ("values",), f"{value!r} is not an arm id"))

    def _check_owner(self, doc: _YamlDocument, path: Path_, item: ItemDef, owner: ItemDef | None) -> None:
        expected = {
            "procedure_code": ("procedure",),
            "reference_range_high": ("observation",),
            "component": ("observation",),
            "method": ("observation",),
            "interpretation": ("observation",),
            "element": ("resource",),
            "suspect_entity": ("resource",),
        }[item.fhir.kind]
        if owner is None:
            self.issues.append(
                doc.issue(path + ("fhir", "of"), f"unknown item {item.fhir.of!r} (must be an item of this form)")
            )
        elif owner.fhir.kind not in expected:
            self.issues.append(
                doc.issue(
                    path + ("fhir", "of"),
                    f"item {owner.id!r} is a {owner.fhir.kind} target; a {item.fhir.kind} needs one of {expected}",
                )
            )

    def _with_criteria(self, study: StudyDef, context: dict[str, Any]) -> StudyDef:
        file = self.directory / CRITERIA_FILE
        if not file.is_file():
            return study
        doc = read_yaml(file)
        if not isinstance(doc.data, dict):
            self._fail([doc.issue((), "expected a mapping")])
        for problem in validate_criteria_file(study, doc.data):
            self.issues.append(doc.issue(problem.path, problem.message))
        criteria = [
            self._validate(doc, CriterionDef, raw, context, ("criteria", index))
            for index, raw in enumerate(doc.data.get("criteria") or [])
        ]
        windows = {
            name: self._validate(doc, WindowDef, raw, context, ("windows", name))
            for name, raw in (doc.data.get("windows") or {}).items()
        }
        reference = self._validate(
            doc, ReferenceDateDef, doc.data.get("reference_date") or {}, context, ("reference_date",)
        )
        self._raise_if_any()
        return study.model_copy(
            update={
                "criteria": tuple(criteria),
                "windows": windows,
                "derived": dict(doc.data.get("derived") or {}),
                "reference_date": reference,
                "default_window": doc.data.get("default_window"),
            }
        )

    def _with_subject_checks(self, study: StudyDef, context: dict[str, Any]) -> StudyDef:
        """subject_checks.yaml: the subject's facts (`facts`, each the latest value of a study item) and the
        checks of an entry against them (`checks`), every name resolved against the study."""
        file = self.directory / SUBJECT_CHECKS_FILE
        if not file.is_file():
            return study
        doc = read_yaml(file)
        if not isinstance(doc.data, dict):
            self._fail([doc.issue((), "expected a mapping with `facts` and `checks`")])
        facts = {
            name: self._validate(doc, SubjectFact, raw, context, ("facts", name))
            for name, raw in (doc.data.get("facts") or {}).items()
        }
        checks = [
            self._validate(doc, SubjectCheck, raw, context, ("checks", index))
            for index, raw in enumerate(doc.data.get("checks") or [])
        ]
        self._raise_if_any()
        for name, fact in facts.items():
            if not study.has_item(fact.item):
                self.issues.append(doc.issue(("facts", name, "item"), f"unknown item {fact.item!r} (form.item)"))
        self._duplicates(doc, "checks", [check.rule for check in checks])
        known_facts = {f"{SUBJECT_PREFIX}{name}" for name in facts}
        for index, check in enumerate(checks):
            forms = [form for form in study.forms if check.applies_to(form.id)]
            for position, form_id in enumerate(check.forms):
                if form_id != "*" and form_id not in {form.id for form in study.forms}:
                    self.issues.append(doc.issue(("checks", index, "forms", position), f"unknown form {form_id!r}"))
            names = {check.item, *condition_items(check.when)}
            for name in sorted(names):
                if name in known_facts or name == ENTRY_DATE:
                    continue
                if "*" in check.forms or not all(name in {item.id for item in form.items} for form in forms):
                    self.issues.append(
                        doc.issue(
                            ("checks", index),
                            f"check {check.rule!r} names {name!r}: neither "
                            f"a fact (subject.<name> of `facts`), entry.date, "
                            f"nor an item of every form it checks",
                        )
                    )
        return study.model_copy(update={"subject_facts": facts, "subject_checks": tuple(checks)})

    def _duplicates(self, doc: _YamlDocument, key: str, ids: list[str]) -> None:
        seen: dict[str, int] = {}
        for index, entry_id in enumerate(ids):
            if entry_id in seen:
                self.issues.append(
                    doc.issue((key, index, "id"), f"duplicate id {entry_id!r} (also {key}[{seen[entry_id]}])")
                )
            else:
                seen[entry_id] = index

    def _fail(self, issues: list[Issue]) -> None:
        raise StudyDefinitionError(self.issues + issues)

    def _raise_if_any(self) -> None:
        if self.issues:
            raise StudyDefinitionError(self.issues)


def _is_pydantic_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        "[" in part
        and "]" in part
        and part.startswith(("function-", "union[", "tagged-union[", "lax-", "json-or-python["))
        or part == "[key]"
    )
