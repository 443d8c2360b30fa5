"""The NCT04163237 study definition in forms/ against CRF-SPEC, and the loader's error reports."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from study_model.loader import StudyDefinitionError, default_study_dir, load_study
from study_model.definitions import StudyDef
from study_model.rules import parse_bound

LOINC = "http://loinc.org"
LOCAL = "http://example.org/fhir/CodeSystem/nct04163237"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def study() -> StudyDef:
    return load_study(default_study_dir())


# --- section 1 ----------------------------------------------------------------------------


def test_study_identity(study: StudyDef) -> None:
    assert study.id == "NCT04163237"
    assert study.identifier_system == "https://clinicaltrials.gov"
    assert study.local_system == LOCAL
    assert study.planned_size == 100


def test_sites_with_mrn_systems(study: StudyDef) -> None:
    assert [(s.id, s.mrn_system) for s in study.sites] == [
        ("S01", "urn:oid:2.16.840.1.113883.3.9999.1"),
        ("S02", "urn:oid:2.16.840.1.113883.3.9999.2"),
    ]
    assert study.site("S01").name == "Guangxi Medical University Cancer Hospital"


def test_a_site_s_today_is_its_own_calendar_date(study: StudyDef) -> None:
    evening_in_utc = datetime(2026, 11, 26, 17, 30, tzinfo=UTC)  # 01:30 the next morning in Guangxi
    assert study.site("S01").time_zone == "Asia/Shanghai"
    assert study.today_at("S01", evening_in_utc) == date(2026, 11, 27)
    assert study.today_at("S02", evening_in_utc) == date(2026, 11, 26)  # no time zone given: UTC
    assert study.today_at(None, evening_in_utc) == date(2026, 11, 26)


def test_arms(study: StudyDef) -> None:
    assert [(a.id, a.label, a.kind) for a in study.arms] == [
        ("PD1_SORA", "PD-1 + Sorafenib", "experimental"),
        ("SORA", "Sorafenib", "comparator"),
    ]


# --- section 2 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "visit_id, target, start, end",
    [
        ("PREOP", 0, -14, 0),
        ("POD7", 7, 5, 9),
        ("SCR", 21, 14, 28),
        ("M1", 30, 23, 37),
        ("M3", 91, 77, 105),
        ("M6", 182, 168, 196),
        ("M9", 273, 259, 287),
        ("M12", 365, 351, 379),
    ],
)
def test_visit_windows(study: StudyDef, visit_id: str, target: int, start: int, end: int) -> None:
    visit = study.visit(visit_id)
    assert (visit.target_day, visit.window_start, visit.window_end) == (target, start, end)


def test_eight_visits_in_schedule_order(study: StudyDef) -> None:
    assert [v.id for v in study.visits] == ["PREOP", "POD7", "SCR", "M1", "M3", "M6", "M9", "M12"]
    assert study.visit("PREOP").before_day_zero
    assert study.day_zero_item == "surgery_date"


# --- section 3 ----------------------------------------------------------------------------

FORM_VISITS = {
    "demographics": ["SCR"],
    "baseline": ["PREOP"],
    "labs": ["SCR", "M1", "M3", "M6", "M9", "M12"],
    "surgery": ["PREOP"],
    "pathology": ["SCR"],
    "afp": ["PREOP", "SCR", "M1", "M3", "M6", "M9", "M12"],
    "ctc": ["PREOP", "POD7", "M1", "M3", "M6", "M9", "M12"],
    "history": ["SCR"],
    "randomisation": ["SCR"],
    # CRF-SPEC 7 (version 2): log forms have no visits
    "exposure": [],
    "adverse_event": [],
    "conmed": [],
    "disease_assessment": ["M3", "M6", "M9", "M12"],
    "end_of_study": [],
}

FORM_ITEMS = {
    "demographics": [
        "birth_date",
        "sex",
        "consent_date",
        "weight",
        "height",
        "wocbp",
        "contraception_agreed",
        "tissue_consent",
    ],
    "baseline": [
        "ecog",
        "child_pugh_class",
        "ascites",
        "encephalopathy",
        "bclc_stage",
        "distant_metastasis",
        "regional_lymph_nodes",
        "prior_antitumour_therapy",
        "recurrent_hcc",
    ],
    "labs": [
        "anc",
        "platelets",
        "hemoglobin",
        "creatinine",
        "creatinine_uln",
        "crcl",
        "ast",
        "ast_uln",
        "alt",
        "alt_uln",
        "bilirubin",
        "bilirubin_uln",
        "albumin",
        "inr",
        "inr_uln",
        "aptt",
        "aptt_uln",
    ],
    "surgery": ["surgery_date", "resection_type", "visible_tumour_thrombus"],
    "pathology": [
        "histology",
        "margin_status",
        "closest_margin",
        "tumour_size",
        "tumour_count",
        "microvascular_invasion",
        "pvtt_extent",
        "bile_duct_invasion",
        "capsule_complete",
        "lymph_node_metastasis",
    ],
    "afp": ["afp"],
    "ctc": ["ctc_count", "blood_volume", "method", "ctc_status"],
    "history": [
        "autoimmune_disease",
        "chronic_kidney_disease",
        "congestive_heart_failure",
        "mi_date",
        "uncontrolled_diabetes",
        "uncontrolled_hypertension",
        "uncontrolled_infection",
        "neuropathy_grade2_plus",
        "significant_abnormality",
        "vaccine_date",
        "steroid_gt10mg_14d",
        "immunosuppressant_14d",
        "anticoagulant_prophylaxis",
        "antitumour_therapy_1m_postop",
    ],
    "randomisation": ["arm", "randomisation_date"],
    "exposure": ["drug", "start_date", "end_date", "dose", "route", "frequency", "modification", "modification_reason"],
    "adverse_event": [
        "ctcae_term",
        "term_verbatim",
        "onset_date",
        "resolution_date",
        "grade",
        "severity",
        "serious",
        "seriousness_criteria",
        "related_pd1",
        "related_sorafenib",
        "immune_related",
        "action_taken",
        "outcome",
    ],
    "conmed": ["medication", "atc", "indication", "start_date", "end_date", "ongoing"],
    "disease_assessment": ["status", "assessment_date", "method", "recurrence_site", "recurrence_date"],
    "end_of_study": ["status", "end_date", "death_date", "cause_of_death", "last_known_alive_date"],
}


def test_forms_visits_and_items(study: StudyDef) -> None:
    assert [f.id for f in study.forms] == list(FORM_VISITS)
    for form in study.forms:
        assert list(form.visits) == FORM_VISITS[form.id], form.id
        assert [i.id for i in form.items] == FORM_ITEMS[form.id], form.id
    assert study.form("afp").repeating and study.form("disease_assessment").repeating
    assert not study.form("labs").repeating
    assert [f.id for f in study.forms if f.kind == "log"] == ["exposure", "adverse_event", "conmed", "end_of_study"]


@pytest.mark.parametrize(
    "item_id, item_type, values",
    [
        ("birth_date", "date", None),
        ("sex", "code", ("male", "female")),
        ("consent_date", "date", None),
        ("wocbp", "boolean", None),
        ("ecog", "integer", None),
        ("child_pugh_class", "code", ("A", "B", "C")),
        ("ascites", "code", ("none", "slight", "moderate_severe")),
        ("encephalopathy", "code", ("none", "grade1_2", "grade3_4")),
        ("bclc_stage", "code", ("0", "A", "B", "C", "D")),
        ("resection_type", "code", ("anatomical", "non_anatomical")),
        ("histology", "code", ("8170/3", "8171/3", "8172/3", "8173/3", "8174/3", "8175/3", "8160/3", "8180/3")),
        ("margin_status", "code", ("R0", "R1", "R2")),
        ("tumour_count", "integer", None),
        ("microvascular_invasion", "code", ("M0", "M1", "M2")),
        ("pvtt_extent", "code", ("Vp0", "Vp1", "Vp2", "Vp3", "Vp4")),
        ("ctc_count", "integer", None),
        ("ctc.method", "code", ("neg_enrichment_tpcr", "other")),
        ("mi_date", "date", None),
        ("vaccine_date", "date", None),
        ("arm", "code", ("PD1_SORA", "SORA")),
        ("randomisation_date", "date", None),
    ],
)
def test_item_types_and_values(study: StudyDef, item_id: str, item_type: str, values: tuple[str, ...] | None) -> None:
    item = study.item(item_id)[1]
    assert item.type == item_type
    assert item.values == values


# item -> canonical unit, UCUM accepted units with factors (CRF-SPEC 3.1-3.7)
SPEC_UNITS = {
    "weight": ("kg", {"[lb_av]": "0.45359237"}),
    "height": ("cm", {"[in_i]": "2.54"}),
    "anc": ("10*9/L", {"10*3/uL": "1", "/uL": "0.001"}),
    "platelets": ("10*9/L", {"10*3/uL": "1", "/uL": "0.001"}),
    "hemoglobin": ("g/L", {"g/dL": "10"}),
    "creatinine": ("umol/L", {"mg/dL": "88.4"}),
    "creatinine_uln": ("umol/L", {"mg/dL": "88.4"}),
    "crcl": ("mL/min", {"mL/s": "60"}),
    "ast": ("U/L", {"[IU]/L": "1", "ukat/L": "60"}),
    "alt": ("U/L", {"[IU]/L": "1", "ukat/L": "60"}),
    "bilirubin": ("umol/L", {"mg/dL": "17.1"}),
    "albumin": ("g/L", {"g/dL": "10"}),
    "inr": ("{INR}", {"1": "1", "{ratio}": "1"}),
    "aptt": ("s", {}),
    "closest_margin": ("mm", {"cm": "10"}),
    "tumour_size": ("cm", {"mm": "0.1"}),
    "afp": ("ug/L", {"ng/mL": "1", "[IU]/mL": "1.21"}),
    "blood_volume": ("mL", {}),
    "ctc_count": ("{cells}", {}),
    "dose": ("mg", {}),  # CRF-SPEC 7.1 exposure
}


@pytest.mark.parametrize("item_id", sorted(SPEC_UNITS))
def test_canonical_and_accepted_units(study: StudyDef, item_id: str) -> None:
    unit, accepted = SPEC_UNITS[item_id]
    item = study.item(item_id)[1]
    ucum_units = {u: f for u, f in item.accepted_units.items() if u not in item.legacy_units}
    assert item.unit == unit
    assert ucum_units == {unit: Decimal(1), **{u: Decimal(f) for u, f in accepted.items()}}


def test_every_quantity_item_is_in_the_unit_table(study: StudyDef) -> None:
    with_units = {i.id for f in study.forms for i in f.items if i.unit is not None}
    assert with_units - set(SPEC_UNITS) == {"ast_uln", "alt_uln", "bilirubin_uln", "inr_uln", "aptt_uln"}


# item -> (primary code, alternates)
SPEC_CODES = {
    "weight": ((LOINC, "29463-7"), []),
    "height": ((LOINC, "8302-2"), []),
    "wocbp": ((LOCAL, "wocbp"), []),
    "contraception_agreed": ((LOCAL, "contraception-agreed"), []),
    "tissue_consent": ((LOCAL, "tissue-consent"), []),
    "ecog": ((LOINC, "89247-1"), []),
    "child_pugh_class": ((LOCAL, "child-pugh-class"), []),
    "ascites": ((LOCAL, "ascites-grade"), []),
    "encephalopathy": ((LOCAL, "he-grade"), []),
    "bclc_stage": ((NCIT, "C115134"), []),
    "distant_metastasis": ((LOCAL, "distant-metastasis"), []),
    "regional_lymph_nodes": ((LOCAL, "regional-ln-involved"), []),
    "prior_antitumour_therapy": ((LOCAL, "prior-antitumour-therapy"), []),
    "recurrent_hcc": ((LOCAL, "recurrent-hcc"), []),
    "anc": ((LOINC, "751-8"), ["26499-4"]),
    "platelets": ((LOINC, "777-3"), ["26515-7"]),
    "hemoglobin": ((LOINC, "718-7"), []),
    "creatinine": ((LOINC, "2160-0"), ["14682-9"]),
    "crcl": ((LOINC, "35591-7"), ["2164-2"]),
    "ast": ((LOINC, "1920-8"), []),
    "alt": ((LOINC, "1742-6"), []),
    "bilirubin": ((LOINC, "1975-2"), ["14631-6"]),
    "albumin": ((LOINC, "1751-7"), []),
    "inr": ((LOINC, "6301-6"), ["38875-1", "34714-6"]),
    "aptt": ((LOINC, "14979-9"), ["3173-2"]),
    "surgery_date": ((LOCAL, "hepatectomy"), []),
    "visible_tumour_thrombus": ((LOCAL, "visible-tumour-thrombus"), []),
    "margin_status": ((SNOMED, "17964000"), []),
    "closest_margin": ((LOINC, "33737-8"), []),
    "tumour_size": ((LOINC, "21889-1"), []),
    "tumour_count": ((LOCAL, "tumour-count"), []),
    "microvascular_invasion": ((LOCAL, "mvi"), []),
    "pvtt_extent": ((LOCAL, "pvtt-extent"), []),
    "bile_duct_invasion": ((LOCAL, "bile-duct-invasion"), []),
    "capsule_complete": ((LOCAL, "tumour-capsule-complete"), []),
    "lymph_node_metastasis": ((LOCAL, "pathologic-ln-metastasis"), []),
    "afp": ((LOINC, "1834-1"), []),
    "ctc_count": ((LOCAL, "ctc-count"), []),
    "blood_volume": ((LOCAL, "analysed-volume"), []),
}


@pytest.mark.parametrize("item_id", sorted(SPEC_CODES))
def test_fhir_codes(study: StudyDef, item_id: str) -> None:
    (system, code), alternates = SPEC_CODES[item_id]
    codes = study.item(item_id)[1].fhir.codes
    assert codes[0].key == (system, code)
    assert [c.code for c in codes[1:]] == alternates
    assert all(c.system == system for c in codes[1:])


def test_history_items_use_their_own_id_as_local_code(study: StudyDef) -> None:
    for item in study.form("history").items:
        assert item.fhir.codes[0].key == (LOCAL, item.id)


@pytest.mark.parametrize(
    "item_id, kind, path, of",
    [
        ("birth_date", "patient", "birthDate", None),
        ("sex", "patient", "gender", None),
        ("consent_date", "research_subject", "period.start", None),
        ("creatinine_uln", "reference_range_high", None, "creatinine"),
        ("ast_uln", "reference_range_high", None, "ast"),
        ("alt_uln", "reference_range_high", None, "alt"),
        ("bilirubin_uln", "reference_range_high", None, "bilirubin"),
        ("inr_uln", "reference_range_high", None, "inr"),
        ("aptt_uln", "reference_range_high", None, "aptt"),
        ("surgery_date", "procedure", None, None),
        ("resection_type", "procedure_code", None, "surgery_date"),
        ("histology", "condition", None, None),
        ("blood_volume", "component", None, "ctc_count"),
        ("ctc.method", "method", None, "ctc_count"),
        ("ctc_status", "interpretation", None, "ctc_count"),
    ],
)
def test_fhir_targets(study: StudyDef, item_id: str, kind: str, path: str | None, of: str | None) -> None:
    target = study.item(item_id)[1].fhir
    assert (target.kind, target.path, target.of) == (kind, path, of)


def test_item_rules_of_the_spec(study: StudyDef) -> None:
    assert study.item("birth_date")[1].identifier_bearing
    condition = study.item("contraception_agreed")[1].enable_when
    assert condition is not None and (condition.item, condition.equals) == ("wocbp", True)
    platelets = study.item("platelets")[1]
    assert (platelets.hard_min, platelets.hard_max) == (Decimal(0), Decimal(2000))
    hemoglobin = study.item("hemoglobin")[1]
    assert (hemoglobin.hard_min, hemoglobin.hard_max) == (Decimal(20), Decimal(250))
    assert (study.item("ecog")[1].hard_min, study.item("ecog")[1].hard_max) == (0, 5)
    assert study.item("tumour_count")[1].hard_min == 1
    assert study.item("ctc_count")[1].hard_min == 0
    assert study.item("blood_volume")[1].default == 5
    assert study.item("ctc.method")[1].default == "neg_enrichment_tpcr"
    assert study.form("surgery").date_item == "surgery_date"


def test_histology_condition_codes(study: StudyDef) -> None:
    target = study.item("histology")[1].fhir
    assert [c.code for c in target.codes] == ["C22.0"]
    assert target.code_by_value["8160/3"].code == "C22.1"
    assert target.value_system == "http://terminology.hl7.org/CodeSystem/icd-o-3"


def test_uln_defaults(study: StudyDef) -> None:
    assert study.uln_defaults == {
        "creatinine": Decimal("97"),
        "ast": Decimal("40"),
        "alt": Decimal("50"),
        "bilirubin": Decimal("21"),
        "inr": Decimal("1.2"),
        "aptt": Decimal("36"),
    }


# --- section 4 ----------------------------------------------------------------------------

CRITERIA = [
    ("I01_histology_hcc", "inclusion"),
    ("I02_surgery", "inclusion"),
    ("I03_bclc_abc", "inclusion"),
    ("I04_child_pugh_a", "inclusion"),
    ("I05_ecog_0_1", "inclusion"),
    ("I06_age_18_75", "inclusion"),
    ("I07_anc", "inclusion"),
    ("I08_platelets", "inclusion"),
    ("I09_hemoglobin", "inclusion"),
    ("I10_renal", "inclusion"),
    ("I11_transaminases", "inclusion"),
    ("I12_bilirubin", "inclusion"),
    ("I13_coagulation", "inclusion"),
    ("I14_high_risk", "inclusion"),
    ("I15_tissue_consent", "inclusion"),
    ("I16_contraception", "inclusion"),
    ("E01_bclc_a_radical", "exclusion"),
    ("E02_child_pugh_c", "exclusion"),
    ("E03_ecog_2_plus", "exclusion"),
    ("E04_non_hcc_histology", "exclusion"),
    ("E05_prior_therapy", "exclusion"),
    ("E06_postop_therapy", "exclusion"),
    ("E07_distant_metastasis", "exclusion"),
    ("E08_autoimmune", "exclusion"),
    ("E09_vaccine_4w", "exclusion"),
    ("E10_immunosuppression", "exclusion"),
    ("E11_comorbidity", "exclusion"),
    ("E12_main_pvtt_or_recurrence", "exclusion"),
]


def test_twenty_eight_criteria(study: StudyDef) -> None:
    assert [(c.id, c.kind) for c in study.criteria] == CRITERIA
    assert all(c.description for c in study.criteria)


def test_thresholds_in_rules(study: StudyDef) -> None:
    assert study.criterion("I07_anc").rule == {"latest": "anc", "window": "labs", "op": ">=", "value": "1.5"}
    renal = study.criterion("I10_renal").rule["all_of"]
    assert renal[0]["uln_multiple"] == "1.5" and renal[1] == {"derived": "crcl", "op": ">=", "value": "50"}
    assert study.criterion("I12_bilirubin").rule["uln_multiple"] == "1.25"
    assert study.criterion("I06_age_18_75").rule["between"] == ["18", "75"]


def test_windows_of_decision_5(study: StudyDef) -> None:
    labs = study.windows["labs"]
    assert [parse_bound(b) for b in labs.on_or_after] == [parse_bound("surgery_date"), parse_bound("R - 14d")]
    assert parse_bound("R - 14d").days == -14
    assert parse_bound(study.windows["afp_postop"].on_or_after[0]).days == 14
    assert study.reference_date.item == "randomisation_date"
    assert set(study.derived) >= {
        "age_at_consent",
        "age_at_r",
        "child_pugh_class",
        "crcl",
        "crcl_cockcroft_gault",
        "postop_afp",
    }


# --- broken definitions -------------------------------------------------------------------


def _broken(tmp_path: Path, relative: str, old: str, new: str) -> tuple[Path, int]:
    """Copy forms/ and replace `old` (occurring once) in one file; returns (file, line)."""
    target_dir = tmp_path / "study"
    shutil.copytree(default_study_dir(), target_dir)
    file = target_dir / relative
    text = file.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur once in {relative}"
    line = text[: text.index(old)].count("\n") + 1
    file.write_text(text.replace(old, new), encoding="utf-8")
    return file, line


def _load_error(directory: Path) -> str:
    with pytest.raises(StudyDefinitionError) as caught:
        load_study(directory)
    return str(caught.value)


@pytest.mark.parametrize(
    "relative, old, new, key_path, message",
    [
        (
            "forms/labs.yaml",
            "  - id: anc\n    label: Absolute neutrophil count\n    type: quantity\n",
            "  - id: anc\n    label: Absolute neutrophil count\n    type: quantitty\n",
            "items[0].type",
            "unknown item type 'quantitty'",
        ),
        (
            "forms/labs.yaml",
            "    label: Hemoglobin\n    type: quantity\n    unit: g/L\n",
            "    label: Hemoglobin\n    type: quantity\n    unit: gram/L\n",
            "items[2].unit",
            "'gram/L' is not a UCUM code",
        ),
        (
            "forms/afp.yaml",
            '"[IU]/mL": "1.21"}',
            '"IU/mL": "1.21", "[IU]/mL": "1.21"}',
            "items[0].accepted_units.IU/mL",
            "'IU/mL' is not a UCUM code",
        ),
        ("forms/labs.yaml", "  - id: alt_uln", "  - id: ast_uln", "items[9].id", "duplicate id 'ast_uln'"),
        # item ids are unique within a form (CRF-SPEC 7 has `method` in ctc and disease_assessment, `status` in
        # disease_assessment and end_of_study); a study-level reference by an id several forms have names them
        (
            "criteria.yaml",
            "rule: {latest: hemoglobin, window: labs",
            "rule: {latest: method, window: labs",
            "criteria[8].rule.latest",
            "item 'method' is in forms ctc, disease_assessment: name it as form.item",
        ),
        ("forms/demographics.yaml", "visits: [SCR]", "visits: [SCREENING]", "visits[0]", "unknown visit 'SCREENING'"),
        (
            "forms/demographics.yaml",
            "enable_when: {item: wocbp, equals: true}",
            "enable_when: {item: wocbpp, equals: true}",
            "items[6].enable_when.item",
            "unknown item 'wocbpp'",
        ),
        (
            "criteria.yaml",
            "rule: {latest: anc, window: labs",
            "rule: {latest: anc_count, window: labs",
            "criteria[6].rule.latest",
            "unknown item 'anc_count'",
        ),
        (
            "criteria.yaml",
            "rule: {derived: child_pugh_class, equals: A}",
            "rule: {derived: child_pugh_klass, equals: A}",
            "criteria[3].rule.derived",
            "unknown derived value 'child_pugh_klass'",
        ),
        (
            "criteria.yaml",
            "{latest: bclc_stage, in: [A, B, C]}",
            "{latest: bclc_stage, in: [A, B, E]}",
            "criteria[2].rule.in[2]",
            "'E' is not a value of item 'bclc_stage'",
        ),
        (
            "criteria.yaml",
            "  - id: I16_contraception",
            "  - id: I15_tissue_consent",
            "criteria[15].id",
            "duplicate criterion id 'I15_tissue_consent'",
        ),
        (
            "criteria.yaml",
            "labs: {on_or_after: [surgery_date, R - 14d]",
            "labs: {on_or_after: [surgery_day, R - 14d]",
            "windows.labs.on_or_after[0]",
            "unknown item 'surgery_day'",
        ),
        (
            "study.yaml",
            "  - {id: M9, label: Month 9,",
            "  - {id: M6, label: Month 9,",
            "visits[6].id",
            "duplicate id 'M6'",
        ),
        ("study.yaml", "  - id: S02\n", "  - id: S01\n", "sites[1].id", "duplicate id 'S01'"),
        (
            "study.yaml",
            "    time_zone: Asia/Shanghai",
            "    time_zone: China/Nanning",
            "sites[0].time_zone",
            "'China/Nanning' is not an IANA time zone",
        ),
        ("study.yaml", '  ast: "40"', '  asst: "40"', "uln_defaults.asst", "unknown item 'asst'"),
        (
            "forms/ctc.yaml",
            "of: ctc_count\n      codes:",
            "of: ctc_cnt\n      codes:",
            "items[1].fhir.of",
            "unknown item 'ctc_cnt'",
        ),
    ],
)
def test_broken_definition_names_file_line_and_key(
    tmp_path: Path, relative: str, old: str, new: str, key_path: str, message: str
) -> None:
    file, line = _broken(tmp_path, relative, old, new)
    error = _load_error(tmp_path / "study")
    assert message in error
    reported = [entry for entry in error.splitlines() if message in entry]
    assert reported[0].startswith(f"{file}:"), reported[0]
    assert f": {key_path}: " in reported[0]
    reported_line = int(re.match(rf"{re.escape(str(file))}:(\d+):", reported[0]).group(1))
    assert line <= reported_line <= line + new.count("\n") + 1


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "values: {status: recurrence}",
            "values: {state: recurrence}",
            "ehr_entries 'ehr_condition' names items the form does not have: state",
        ),
        ("  - slot: ehr_condition", "  - slot: status", "ehr_entries slot 'status' is an item id"),
        ("repeating: true", "repeating: false", "`ehr_entries` is for repeating visit forms"),
    ],
)
def test_ehr_entries_of_a_form_are_checked(tmp_path: Path, old: str, new: str, message: str) -> None:
    _broken(tmp_path, "forms/disease_assessment.yaml", old, new)
    assert message in _load_error(tmp_path / "study")


def test_disease_assessment_takes_recurrence_conditions(study: StudyDef) -> None:
    [ehr] = study.form("disease_assessment").ehr_entries
    assert (ehr.slot, ehr.resource_type, ehr.values) == ("ehr_condition", "Condition", {"status": "recurrence"})
    assert [code.key for code in ehr.codes] == [(study.local_system, "recurrence")]
    assert ehr.dates == {"assessment_date": "onsetDateTime", "recurrence_date": "onsetDateTime"}


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    file, line = _broken(tmp_path, "forms/baseline.yaml", "    values: [A, B, C]\n", "    values: [A, B, C\n")
    error = _load_error(tmp_path / "study")
    assert f"{file}:" in error and "malformed YAML" in error


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    file, line = _broken(
        tmp_path,
        "forms/surgery.yaml",
        "    label: Date of surgery\n",
        "    label: Date of surgery\n    label: Surgery date\n",
    )
    error = _load_error(tmp_path / "study")
    assert f"{file}:{line + 1}: items[0].label: duplicate key 'label'" in error


def test_unlisted_form_file_is_refused(tmp_path: Path) -> None:
    shutil.copytree(default_study_dir(), tmp_path / "study")
    (tmp_path / "study" / "forms" / "extra.yaml").write_text("id: extra\n", encoding="utf-8")
    assert "extra.yaml: <root>: form file is not listed" in _load_error(tmp_path / "study")


def test_broken_fixture_directory(tmp_path: Path) -> None:
    fixtures = Path(__file__).parent / "data" / "broken_studies"
    for directory in sorted(p for p in fixtures.iterdir() if p.is_dir()):
        expected = (directory / "EXPECTED").read_text(encoding="utf-8").strip()
        assert expected in _load_error(directory), directory.name


# --- a second study needs no Python change ------------------------------------------------

SECOND_STUDY = {
    "study.yaml": """
id: DEMO-2
title: A different study
identifier_system: https://example.org/trials
planned_size: 10
local_system: https://sponsor.example/fhir/CodeSystem/demo2
code_systems: {LOINC: http://loinc.org}
sites: [{id: A, name: Site A, mrn_system: "urn:oid:1.2.3"}]
arms: [{id: X, label: Drug X, kind: experimental}]
visits: [{id: BASE, label: Baseline, target_day: 0, window_start: -7, window_end: 0}]
forms: [vitals]
uln_defaults: {}
""",
    "forms/vitals.yaml": """
id: vitals
title: Vitals
visits: [BASE]
observation_category: vital-signs
items:
  - id: glucose
    label: Glucose
    type: quantity
    unit: mmol/L
    accepted_units: {"mg/dL": "0.0555"}
    fhir: {kind: observation, codes: ["LOINC#15074-8 Glucose"]}
""",
    "criteria.yaml": """
windows: {ever: {on_or_before: [R]}}
criteria:
  - {id: C1, kind: inclusion, description: glucose ok, rule: {latest: glucose, window: ever, op: "<", value: "7"}}
""",
}


def test_a_second_study_loads_from_data_only(tmp_path: Path) -> None:
    for relative, text in SECOND_STUDY.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    other = load_study(tmp_path)
    assert other.id == "DEMO-2"
    form, item = other.item("glucose")
    assert item.accepted_units["mg/dL"] == Decimal("0.0555")
    assert other.criteria[0].id == "C1"
    assert other.value_coding(item, "x").system == "https://sponsor.example/fhir/CodeSystem/demo2"


def test_kept_resource_types_must_be_r4_types_and_keep_the_subjects(tmp_path: Path) -> None:
    shutil.copytree(default_study_dir(), tmp_path / "study")
    study_file = tmp_path / "study" / "study.yaml"
    text = study_file.read_text(encoding="utf-8")
    assert "kept_resource_types: [Patient, ResearchSubject," in text
    study_file.write_text(
        text.replace(
            "kept_resource_types: [Patient, ResearchSubject,", "kept_resource_types: [Patient, Spaceship, Observation,"
        ),
        encoding="utf-8",
    )
    error = _load_error(tmp_path / "study")
    assert "kept_resource_types[1]: 'Spaceship' is not an R4 resource type" in error
    assert "'Observation' is listed twice" in error and "the study must keep ResearchSubject" in error
