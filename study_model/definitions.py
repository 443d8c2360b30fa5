"""Pydantic models of a study definition (study, sites, arms, visits, forms, items, criteria).

Models are validated with a context {"code_systems": {alias: uri}} so a study file can write
codes as "LOINC#718-7 Hemoglobin [Mass/volume] in Blood" (alias, '#', code, optional display).
The alias LOCAL always means the study's own local code system.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from study_model.ucum import is_ucum_like

ItemType = Literal["date", "integer", "decimal", "boolean", "code", "quantity", "text", "codes"]
ITEM_TYPES: tuple[str, ...] = ("date", "integer", "decimal", "boolean", "code", "quantity", "text", "codes")
TEXT_MAX_LENGTH = 500  # free text (CRF-SPEC 7): at most 500 characters, never in a de-identified export

TargetKind = Literal[
    "observation",  # its own Observation; `codes` = Observation.code (primary first)
    "patient",  # a Patient element; `path` = birthDate | gender
    "research_subject",  # a ResearchSubject element; `path` = period.start | assignedArm
    "procedure",  # its own Procedure (the item is the performed date); `codes` = Procedure.code
    "procedure_code",  # an extra Procedure.code coding of the `of` item's Procedure
    "condition",  # its own Condition; the value goes in the mCODE histology extension
    "reference_range_high",  # Observation.referenceRange.high of the `of` item's Observation
    "component",  # an Observation.component (code `codes`) of the `of` item
    "method",  # Observation.method of the `of` item
    "interpretation",  # Observation.interpretation of the `of` item (derived items)
    "resource",  # its own resource of `resource_type`; the value goes at `path` (AdverseEvent.event)
    "element",  # an element at `path` of the `of` item's resource (`extension:name.valueInteger`)
    "suspect_entity",  # an AdverseEvent.suspectEntity of the `of` item: the drug `medication`, causality = value
    "none",  # kept in the eCRF only
]
DEPENDENT_KINDS = frozenset(
    {"procedure_code", "reference_range_high", "component", "method", "interpretation", "element", "suspect_entity"}
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def to_decimal(value: Any) -> Decimal:
    """Exact Decimal of a YAML/JSON scalar; floats go through their shortest repr."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str, float)):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {value!r}") from None
        if not result.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
        return result
    raise ValueError(f"expected a number, got {value!r}")


def resolve_system(alias_or_uri: str, info: ValidationInfo | None) -> str:
    if ":" in alias_or_uri:
        return alias_or_uri
    systems = (info.context or {}).get("code_systems", {}) if info else {}
    if alias_or_uri not in systems:
        known = ", ".join(sorted(systems)) or "none"
        raise ValueError(f"unknown code system alias {alias_or_uri!r} (known: {known})")
    return systems[alias_or_uri]


class Coding(BaseModel):
    model_config = _FROZEN
    system: str
    code: str
    display: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse_compact(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, str):
            head, _, display = data.strip().partition(" ")
            system, sep, code = head.rpartition("#")
            if not sep or not system or not code:
                raise ValueError(f"a code is written SYSTEM#code [display], got {data!r}")
            data = {"system": system, "code": code, "display": display.strip() or None}
        if isinstance(data, dict) and isinstance(data.get("system"), str):
            data = {**data, "system": resolve_system(data["system"], info)}
        return data

    @property
    def key(self) -> tuple[str, str]:
        return (self.system, self.code)

    def fhir(self) -> dict[str, str]:
        coding = {"system": self.system, "code": self.code}
        if self.display:
            coding["display"] = self.display
        return coding


class EhrSource(BaseModel):
    """A kind of EHR resource that also answers an item (boolean -> true, date -> its date)."""

    model_config = _FROZEN
    resource: Literal["Condition", "Immunization"]
    systems: tuple[str, ...] = ()
    code_prefixes: tuple[str, ...] = ()

    @field_validator("systems", mode="before")
    @classmethod
    def _resolve_systems(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(resolve_system(v, info) if isinstance(v, str) else v for v in value)
        return value

    def matches_code(self, system: str | None, code: str | None) -> bool:
        if not self.code_prefixes:
            return True
        if system not in self.systems or not code:
            return False
        return any(code.startswith(prefix) for prefix in self.code_prefixes)


class FhirTarget(BaseModel):
    model_config = _FROZEN
    kind: TargetKind
    codes: tuple[Coding, ...] = ()
    path: str | None = None
    of: str | None = None
    category: str | None = None
    code_by_value: dict[str, Coding] = Field(default_factory=dict)
    value_aliases: dict[str, str] = Field(default_factory=dict)
    value_system: str | None = None
    derived_from: tuple[EhrSource, ...] = ()
    resource_type: str | None = None  # kind resource: the type of the resource the item owns
    fixed: dict[str, Any] = Field(default_factory=dict)  # kind resource: elements every such resource has
    also: tuple[str, ...] = ()  # more paths written with the same value (read back from `path` only)
    code_pattern: str | None = None  # a coded value's code in the local system, e.g. "ae-{value}"
    as_code: bool = False  # write a coded value as its bare code (a `code` element such as status)
    # kind resource whose type depends on the item's value (exposure.drug: pd1 -> MedicationAdministration,
    # sorafenib -> MedicationStatement), with the fixed elements of each variant on top of `fixed`
    resource_type_by_value: dict[str, str] = Field(default_factory=dict)
    fixed_by_value: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # the path in a resource of that type, where it differs from `path` (MedicationAdministration.dosage.dose,
    # MedicationStatement.dosage[].doseAndRate[].doseQuantity)
    path_by_type: dict[str, str] = Field(default_factory=dict)
    # kind suspect_entity: the drug (its coding), and the study extension on the suspectEntity that names it
    medication: Coding | None = None
    extension: str | None = None
    legacy_paths: tuple[str, ...] = ()  # read on input when the target itself finds nothing (never written)

    def path_in(self, resource_type: str | None) -> str | None:
        """The path of the value in a resource of `resource_type`."""
        return self.path_by_type.get(resource_type or "", self.path)

    def resource_type_of(self, value: Any) -> str | None:
        """The type of the resource a `resource` item writes for `value`."""
        if self.resource_type_by_value:
            key = ("true" if value else "false") if isinstance(value, bool) else str(value)
            return self.resource_type_by_value.get(key)
        return self.resource_type

    @property
    def resource_types(self) -> tuple[str, ...]:
        """Every type a `resource` item may write."""
        if self.resource_type_by_value:
            return tuple(dict.fromkeys(self.resource_type_by_value.values()))
        return (self.resource_type,) if self.resource_type else ()

    @field_validator("value_system", mode="before")
    @classmethod
    def _resolve_value_system(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_system(value, info) if isinstance(value, str) else value

    @field_validator("value_aliases", mode="before")
    @classmethod
    def _resolve_aliases(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            return value
        resolved = {}
        for compact, item_value in value.items():
            coding = Coding.model_validate(compact, context=info.context)
            resolved[f"{coding.system}|{coding.code}"] = str(item_value)
        return resolved

    @model_validator(mode="after")
    def _check_shape(self) -> FhirTarget:
        needs_codes = {"observation", "procedure", "condition", "component"}
        if self.kind in needs_codes and not self.codes:
            raise ValueError(f"a {self.kind} target needs `codes`")
        if self.kind in DEPENDENT_KINDS and not self.of:
            raise ValueError(f"a {self.kind} target needs `of` (the item that owns the resource)")
        if self.kind == "patient" and self.path not in ("birthDate", "gender"):
            raise ValueError("a patient target needs path birthDate or gender")
        if self.kind == "research_subject" and self.path not in ("period.start", "assignedArm"):
            raise ValueError("a research_subject target needs path period.start or assignedArm")
        if self.kind == "condition" and not self.value_system:
            raise ValueError("a condition target needs `value_system` (the morphology code system)")
        if self.kind == "resource" and not ((self.resource_type or self.resource_type_by_value) and self.path):
            raise ValueError(
                "a resource target needs `resource_type` (or `resource_type_by_value`) and the `path` of its value"
            )
        if self.resource_type and self.resource_type_by_value:
            raise ValueError("give `resource_type` or `resource_type_by_value`, not both")
        if set(self.fixed_by_value) - set(self.resource_type_by_value):
            raise ValueError("`fixed_by_value` names values that `resource_type_by_value` does not")
        if self.kind == "suspect_entity" and not (self.medication and self.extension):
            raise ValueError("a suspect_entity target needs the `medication` coding and the `extension` naming it")
        if self.kind == "element" and not self.path:
            raise ValueError("an element target needs the `path` of its value")
        if (self.fixed or self.resource_type or self.resource_type_by_value) and self.kind != "resource":
            raise ValueError("only a resource target has `resource_type` and `fixed`")
        if self.path_by_type and self.kind not in ("resource", "element"):
            raise ValueError("only resource and element targets have `path_by_type`")
        return self


class EnableWhen(BaseModel):
    model_config = _FROZEN
    item: str
    equals: bool | str | int


class DerivedCase(BaseModel):
    model_config = _FROZEN
    value: str
    when: dict[str, Any]


class Derivation(BaseModel):
    """How a form computes a derived item from other items of the same form instance."""

    model_config = _FROZEN
    cases: tuple[DerivedCase, ...]
    otherwise: str | None = None


class ItemDef(BaseModel):
    model_config = _FROZEN
    id: str
    label: str
    type: ItemType
    required: bool = False
    values: tuple[str, ...] | None = None
    unit: str | None = None
    accepted_units: dict[str, Decimal] = Field(default_factory=dict)
    legacy_units: dict[str, str] = Field(default_factory=dict)
    hard_min: Decimal | None = None
    hard_max: Decimal | None = None
    soft_min: Decimal | None = None
    soft_max: Decimal | None = None
    enable_when: EnableWhen | None = None
    default: Any = None
    identifier_bearing: bool = False
    derived: Derivation | None = None
    max_length: int | None = None  # text items: at most TEXT_MAX_LENGTH
    fhir: FhirTarget

    @model_validator(mode="before")
    @classmethod
    def _collect_unit_factors(cls, data: Any) -> Any:
        """accepted_units ends up holding canonical x1, the UCUM alternatives and the legacy
        spellings, each with its exact factor to the canonical unit."""
        if not isinstance(data, dict) or not data.get("unit"):
            return data
        canonical = data["unit"]
        declared = data.get("accepted_units") or {}
        legacy = data.get("legacy_units") or {}
        if not isinstance(declared, dict) or not isinstance(legacy, dict):
            return data
        factors: dict[str, Any] = {canonical: Decimal(1)}
        for unit, factor in declared.items():
            factors[str(unit)] = to_decimal(factor)
        for spelling, ucum in legacy.items():
            if ucum not in factors:
                raise ValueError(
                    f"legacy unit {spelling!r} stands for {ucum!r}, "
                    f"which is neither the canonical unit nor an accepted unit"
                )
            factors[str(spelling)] = factors[ucum]
        return {**data, "accepted_units": factors}

    @field_validator("hard_min", "hard_max", "soft_min", "soft_max", mode="before")
    @classmethod
    def _exact_bound(cls, value: Any) -> Any:
        return None if value is None else to_decimal(value)

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(str(v) for v in value)
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ItemDef:
        if self.type in ("code", "codes") and not self.values:
            raise ValueError(f"a {self.type} item needs `values`")
        if self.type not in ("code", "codes") and self.values:
            raise ValueError("only code and codes items have `values`")
        if self.max_length is not None and (self.type != "text" or not 0 < self.max_length <= TEXT_MAX_LENGTH):
            raise ValueError(f"`max_length` is for text items, at most {TEXT_MAX_LENGTH}")
        if self.type == "quantity" and not self.unit:
            raise ValueError("a quantity item needs a canonical `unit`")
        if self.unit is not None and not is_ucum_like(self.unit):
            raise ValueError(f"unit {self.unit!r} is not a UCUM code")
        for unit in self.accepted_units:
            if unit not in self.legacy_units and not is_ucum_like(unit):
                raise ValueError(
                    f"accepted unit {unit!r} is not a UCUM code (declare free-text spellings under legacy_units)"
                )
        for factor in self.accepted_units.values():
            if factor <= 0:
                raise ValueError("unit factors must be positive")
        for low, high in ((self.hard_min, self.hard_max), (self.soft_min, self.soft_max)):
            if low is not None and high is not None and low > high:
                raise ValueError("a range minimum is above its maximum")
        if self.default is not None and self.values and str(self.default) not in self.values:
            raise ValueError(f"default {self.default!r} is not one of the values")
        return self

    @property
    def is_quantity_like(self) -> bool:
        return self.unit is not None

    @property
    def text_limit(self) -> int:
        return self.max_length or TEXT_MAX_LENGTH


class FormCheck(BaseModel):
    """A check across items of one entry, as data: `when` (the condition language of derived items, plus
    `not`, `present`, `has`, `before`) describes the violation; a hard check refuses the save (422), a
    warning is returned with it."""

    model_config = _FROZEN
    rule: str
    item: str  # the item the finding names
    message: str
    severity: Literal["hard", "warning"] = "hard"
    when: dict[str, Any]


def condition_items(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key in ("item", "before"):
            if isinstance(node.get(key), str):
                yield node[key]
        for key in ("all_of", "any_of"):
            for child in node.get(key) or ():
                yield from condition_items(child)
        if "not" in node:
            yield from condition_items(node["not"])


class EndsParticipation(BaseModel):
    """A log form whose live entry ends the subject's participation (end_of_study): ResearchSubject.status
    and period.end, and Patient.deceasedDateTime, follow its items as derived state."""

    model_config = _FROZEN
    status_item: str
    end_date_item: str
    death_date_item: str | None = None
    screen_failure_values: tuple[str, ...] = ()  # never randomised: ineligible (eligibility says so) or withdrawn


class EhrEntry(BaseModel):
    """A kind of EHR resource that, pushed through /fhir and owned by no form, is an entry of a repeating form
    (disease_assessment: a recurrence Condition). It is read as the form's items: `values` fixed (status:
    recurrence), `dates` from its elements (recurrence_date: onsetDateTime). The entry holds it in `slot`; a
    save through the form writes the form's own resources beside it and never rewrites nor deletes it."""

    model_config = _FROZEN
    slot: str
    resource_type: Literal["Condition"]
    codes: tuple[Coding, ...] = Field(min_length=1)  # Condition.code: one of them must be there
    values: dict[str, str] = Field(default_factory=dict)
    dates: dict[str, Literal["onsetDateTime"]] = Field(default_factory=dict)
    message: str  # a save giving one of these items another value is refused: {item}, {resource}, {value}

    def matches(self, resource: dict[str, Any]) -> bool:
        if not isinstance(resource, dict) or resource.get("resourceType") != self.resource_type:
            return False
        codings = (resource.get("code") or {}).get("coding") or []
        keys = {(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)}
        return bool(keys & {code.key for code in self.codes})


class FormDef(BaseModel):
    model_config = _FROZEN
    id: str
    title: str
    visits: tuple[str, ...] = ()
    kind: Literal["visit", "log"] = "visit"  # log: entries not tied to a visit (adverse events, medication)
    repeating: bool = False  # visit forms: any number of entries per visit besides the visit's own form
    max_entries: int | None = Field(default=None, ge=1)  # log forms: live entries a subject may have (end_of_study: 1)
    ends_participation: EndsParticipation | None = None
    observation_category: str | None = None
    date_item: str | None = None
    items: tuple[ItemDef, ...]
    checks: tuple[FormCheck, ...] = ()
    ehr_entries: tuple[EhrEntry, ...] = ()  # repeating forms: EHR resources that land as entries

    @model_validator(mode="before")
    @classmethod
    def _inherit_units_of_reference_ranges(cls, data: Any) -> Any:
        """A `reference_range_high` item without its own unit takes its base item's units."""
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            return data
        by_id = {raw.get("id"): raw for raw in data["items"] if isinstance(raw, dict)}
        items = []
        for raw in data["items"]:
            target = raw.get("fhir") if isinstance(raw, dict) else None
            if (
                isinstance(target, dict)
                and target.get("kind") == "reference_range_high"
                and "unit" not in raw
                and isinstance(by_id.get(target.get("of")), dict)
            ):
                base = by_id[target["of"]]
                raw = {**raw, **{key: base[key] for key in ("unit", "accepted_units", "legacy_units") if key in base}}
            items.append(raw)
        return {**data, "items": items}

    @model_validator(mode="after")
    def _kind_and_visits(self) -> FormDef:
        if self.kind == "log" and self.visits:
            raise ValueError("a log form is not collected at visits: leave `visits` out")
        if self.kind == "log" and self.repeating:
            raise ValueError("a log form has entries already; `repeating` is for visit forms")
        if self.ends_participation is not None:
            ends = self.ends_participation
            named = {ends.status_item, ends.end_date_item} | ({ends.death_date_item} - {None})
            if self.kind != "log" or self.max_entries != 1:
                raise ValueError("`ends_participation` needs a log form with `max_entries: 1`")
            if named - {item.id for item in self.items}:
                raise ValueError(
                    f"`ends_participation` names items the form lacks: {sorted(named - {i.id for i in self.items})}"
                )
        if self.max_entries is not None and self.kind != "log":
            raise ValueError(
                "`max_entries` is for log forms (a subject's entries of the form, withdrawn ones not counted)"
            )
        if self.kind == "visit" and not self.visits:
            raise ValueError("a visit form needs `visits` (or `kind: log`)")
        known = {item.id for item in self.items}
        for ehr in self.ehr_entries:
            if not self.repeating:
                raise ValueError("`ehr_entries` is for repeating visit forms (a log form's anchors are its items)")
            unknown = sorted((set(ehr.values) | set(ehr.dates)) - known)
            if unknown:
                raise ValueError(f"ehr_entries {ehr.slot!r} names items the form does not have: {', '.join(unknown)}")
            if ehr.slot in known:
                raise ValueError(f"ehr_entries slot {ehr.slot!r} is an item id: the slot must be a name of its own")
        for check in self.checks:
            unknown = sorted({check.item, *condition_items(check.when)} - known)
            if unknown:
                raise ValueError(f"check {check.rule!r} names items the form does not have: {', '.join(unknown)}")
        return self

    @property
    def has_entries(self) -> bool:
        """Entries (each with its own id and lifecycle) are kept for log forms and repeating visit forms."""
        return self.kind == "log" or self.repeating

    def item(self, item_id: str) -> ItemDef:
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(f"form {self.id!r} has no item {item_id!r}")


SUBJECT_PREFIX = "subject."  # a subject fact in a cross-form check: subject.arm
ENTRY_DATE = "entry.date"  # the date of the form or entry being saved (its date item, else its visit date)


class SubjectFact(BaseModel):
    """A fact of the subject that cross-form checks name as `subject.<name>`: the latest value of a study item
    (`form.item`), from whichever door wrote it; a withdrawn entry's values are gone with its resources."""

    model_config = _FROZEN
    item: str


class SubjectCheck(BaseModel):
    """A check of one entry against the subject's facts (forms/subject_checks.yaml): `when` in the language of
    form checks, over the entry's items, `subject.<fact>` and `entry.date`; `forms` ["*"]: every form and entry.
    `deviation`: a finding also flags the entry as a protocol deviation (as a visit date outside its window)."""

    model_config = _FROZEN
    rule: str
    forms: tuple[str, ...]
    item: str  # the item the finding names (`entry.date`: the form's date item, else visit_date)
    message: str
    severity: Literal["hard", "warning"] = "warning"
    deviation: bool = False
    when: dict[str, Any]

    def applies_to(self, form_id: str) -> bool:
        return "*" in self.forms or form_id in self.forms


class SiteDef(BaseModel):
    model_config = _FROZEN
    id: str
    name: str
    mrn_system: str
    time_zone: str = "UTC"  # IANA name: the site's calendar decides what "today" is for its subjects

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone {value!r} is not an IANA time zone (e.g. Asia/Shanghai)") from None
        return value

    def today(self, now: datetime | None = None) -> date:
        """The date it is at the site."""
        return (now or datetime.now(UTC)).astimezone(ZoneInfo(self.time_zone)).date()


class ArmDef(BaseModel):
    model_config = _FROZEN
    id: str
    label: str
    kind: Literal["experimental", "comparator", "placebo", "other"]


class VisitDef(BaseModel):
    model_config = _FROZEN
    id: str
    label: str
    target_day: int
    window_start: int
    window_end: int
    before_day_zero: bool = False

    @model_validator(mode="after")
    def _window_contains_target(self) -> VisitDef:
        if not self.window_start <= self.target_day <= self.window_end:
            raise ValueError("target_day must lie inside [window_start, window_end]")
        return self

    def contains(self, day: int) -> bool:
        return self.window_start <= day <= self.window_end


class WindowDef(BaseModel):
    """A date window of the rule language: every bound must hold (all inclusive).
    Bounds are anchor expressions: 'R', '<date item>', '<anchor> + 14d', 'R - 28d'."""

    model_config = _FROZEN
    on_or_after: tuple[str, ...] = ()
    on_or_before: tuple[str, ...] = ()


class ReferenceDateDef(BaseModel):
    """The rule language's reference date: `item` once it has a value, else the evaluation time."""

    model_config = _FROZEN
    name: str = "R"
    item: str | None = None


class CriterionDef(BaseModel):
    model_config = _FROZEN
    id: str
    kind: Literal["inclusion", "exclusion"]
    description: str
    rule: dict[str, Any]


class StudyDef(BaseModel):
    model_config = _FROZEN
    id: str
    title: str
    identifier_system: str
    local_system: str
    planned_size: int
    canonical_base: str = "http://example.org/fhir"
    canonical_quantity_extension: str = "http://example.org/fhir/StructureDefinition/canonical-quantity"
    value_code_pattern: str = "{item}-{value}"
    day_zero_item: str | None = None
    code_systems: dict[str, str] = Field(default_factory=dict)
    sites: tuple[SiteDef, ...]
    arms: tuple[ArmDef, ...]
    visits: tuple[VisitDef, ...]
    forms: tuple[FormDef, ...]
    criteria: tuple[CriterionDef, ...] = ()
    reference_date: ReferenceDateDef = ReferenceDateDef()
    default_window: str | None = None
    windows: dict[str, WindowDef] = Field(default_factory=dict)
    derived: dict[str, dict[str, Any]] = Field(default_factory=dict)
    uln_defaults: dict[str, Decimal] = Field(default_factory=dict)
    kept_resource_types: tuple[str, ...] = ()  # FHIR types stored; others are validated and not retained
    subject_facts: dict[str, SubjectFact] = Field(default_factory=dict)  # forms/subject_checks.yaml
    subject_checks: tuple[SubjectCheck, ...] = ()

    @field_validator("uln_defaults", mode="before")
    @classmethod
    def _exact_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: to_decimal(v) for key, v in value.items()}
        return value

    def form(self, form_id: str) -> FormDef:
        for form in self.forms:
            if form.id == form_id:
                return form
        raise KeyError(f"study {self.id!r} has no form {form_id!r}")

    def visit(self, visit_id: str) -> VisitDef:
        for visit in self.visits:
            if visit.id == visit_id:
                return visit
        raise KeyError(f"study {self.id!r} has no visit {visit_id!r}")

    def site(self, site_id: str) -> SiteDef:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(f"study {self.id!r} has no site {site_id!r}")

    def today_at(self, site_id: str | None, now: datetime | None = None) -> date:
        """The date it is at the site (in UTC for no site or one the study does not list)."""
        site = next((site for site in self.sites if site.id == site_id), None)
        return site.today(now) if site else (now or datetime.now(UTC)).astimezone(UTC).date()

    def arm(self, arm_id: str) -> ArmDef:
        for arm in self.arms:
            if arm.id == arm_id:
                return arm
        raise KeyError(f"study {self.id!r} has no arm {arm_id!r}")

    def criterion(self, criterion_id: str) -> CriterionDef:
        for criterion in self.criteria:
            if criterion.id == criterion_id:
                return criterion
        raise KeyError(f"study {self.id!r} has no criterion {criterion_id!r}")

    def item(self, item_id: str) -> tuple[FormDef, ItemDef]:
        """An item named by a study-level reference: `form.item`, or a bare id that one form alone has
        (item ids are unique within a form; `status` of disease_assessment and of end_of_study differ)."""
        form_id, dot, bare = item_id.rpartition(".")
        found = [
            (form, item)
            for form in self.forms
            if not dot or form.id == form_id
            for item in form.items
            if item.id == (bare if dot else item_id)
        ]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(f"study {self.id!r} has no item {item_id!r}")
        forms = ", ".join(form.id for form, _ in found)
        raise KeyError(f"item {item_id!r} is in forms {forms}: name it as form.item ({found[0][0].id}.{item_id})")

    def has_item(self, item_id: str) -> bool:
        try:
            self.item(item_id)
        except KeyError:
            return False
        return True

    def dependents_of(self, form: FormDef, owner_id: str) -> tuple[ItemDef, ...]:
        """Items of `form` that are written into the resource owned by `owner_id`."""
        return self._dependents.get((form.id, owner_id), ())

    def items_of_kind(self, kind: str) -> tuple[tuple[FormDef, ItemDef], ...]:
        """(form, item) of every item whose FHIR target is of `kind`, in study order."""
        return self._items_by_kind.get(kind, ())

    def resource_owners(self, resource_type: str) -> tuple[tuple[FormDef, ItemDef], ...]:
        """(form, item) of the items that own a resource of `resource_type` (kind resource): asked for every
        resource written, so indexed once per loaded study."""
        return self._resource_owners.get(resource_type, ())

    @cached_property
    def _resource_owners(self) -> dict[str, tuple[tuple[FormDef, ItemDef], ...]]:
        index: dict[str, list[tuple[FormDef, ItemDef]]] = {}
        for form, item in self.items_of_kind("resource"):
            for resource_type in item.fhir.resource_types:
                index.setdefault(resource_type, []).append((form, item))
        return {resource_type: tuple(pairs) for resource_type, pairs in index.items()}

    def extension_url(self, name: str) -> str:
        """The URL of the study's own extension `name` (paths write it `extension:name`)."""
        return f"{self.canonical_base}/StructureDefinition/{name}"

    def observation_items_with_code(self, keys: set[tuple[str, str]]) -> list[tuple[FormDef, ItemDef]]:
        """(form, item) of the observation items having any of the codes (system, code), in study order."""
        if len(keys) == 1:
            return list(self._observation_items_by_code.get(next(iter(keys)), ()))
        found = {id(item): (form, item) for key in keys for form, item in self._observation_items_by_code.get(key, ())}
        return [pair for pair in self.items_of_kind("observation") if id(pair[1]) in found]

    # Indexes built once per loaded study, since every stored resource is read against it.

    @cached_property
    def _items_by_kind(self) -> dict[str, tuple[tuple[FormDef, ItemDef], ...]]:
        index: dict[str, list[tuple[FormDef, ItemDef]]] = {}
        for form in self.forms:
            for item in form.items:
                index.setdefault(item.fhir.kind, []).append((form, item))
        return {kind: tuple(pairs) for kind, pairs in index.items()}

    @cached_property
    def _observation_items_by_code(self) -> dict[tuple[str, str], tuple[tuple[FormDef, ItemDef], ...]]:
        index: dict[tuple[str, str], list[tuple[FormDef, ItemDef]]] = {}
        for form, item in self.items_of_kind("observation"):
            for key in dict.fromkeys(coding.key for coding in item.fhir.codes):
                index.setdefault(key, []).append((form, item))
        return {key: tuple(pairs) for key, pairs in index.items()}

    @cached_property
    def _dependents(self) -> dict[tuple[str, str], tuple[ItemDef, ...]]:
        index: dict[tuple[str, str], list[ItemDef]] = {}
        for form in self.forms:
            for item in form.items:
                if item.fhir.of is not None:
                    index.setdefault((form.id, item.fhir.of), []).append(item)
        return {key: tuple(items) for key, items in index.items()}

    def uln_item_of(self, base_item_id: str) -> ItemDef | None:
        form, _ = self.item(base_item_id)
        for item in self.dependents_of(form, base_item_id):
            if item.fhir.kind == "reference_range_high":
                return item
        return None

    def value_coding(self, item: ItemDef, value: str) -> Coding:
        """The coding that represents a code item's value (valueCodeableConcept, answerOption).
        A condition item's value is its morphology code; its code_by_value maps Condition.code."""
        if item.fhir.kind == "condition" and item.fhir.value_system:
            return Coding(system=item.fhir.value_system, code=value)
        if value in item.fhir.code_by_value:
            return item.fhir.code_by_value[value]
        pattern = item.fhir.code_pattern or self.value_code_pattern
        code = pattern.format(item=item.id, value=value)
        return Coding(system=self.local_system, code=code, display=value)
