"""SDTM datasets from the eCRF's values, following the study's mapping (`forms/sdtm.yaml`): DM, DS, PR and the
findings domains (VS, LB, ...), each with its SUPP-- holding every record's FHIR origin (resource and version).
Rows are made subject by subject; for sponsors through the export's de-identification (pseudonymous subject and
resource ids, dates shifted per subject, study days exact, ages instead of birth dates)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from ecrf.cdisc.collect import FormRecord, SubjectRecord
from ecrf.crf.schedule import UNSCHEDULED
from ecrf.cdisc.mapping import Mapping
from ecrf.export.deidentify import Deidentifier, completed_years, parse_date, site_only
from study_model.definitions import StudyDef

COLLECTED, DERIVED, ASSIGNED = "Collected", "Derived", "Assigned"
METHODS = {
    "AGE": "Completed years from the birth date to the informed consent date (eCRF items birth_date, consent_date)",
    "DY": "Study day: date - RFSTDTC (+1 on or after RFSTDTC), from unshifted dates",
    "STRESN": "The collected value converted exactly to the study's canonical unit (forms/, UCUM factors)",
    "SEQ": "Sequence number of the subject's records in the domain, in export order",
    "IE": "From the subject's eligibility evaluation (forms/criteria.yaml; the frozen one once randomised): "
    "inclusion criteria not met (N) and exclusion criteria met (Y), dated by its reference date R",
    "VISITNUM": "Order of the visit in the study's schedule (forms/study.yaml)",
    "ARMNRS": "Null arm: SCREEN FAILURE when the subject's eligibility is ineligible, else NOT ASSIGNED "
    "(forms/sdtm.yaml dm.ARMNRS)",
}


LOG_LABELS = {  # SDTMIG 3.4 labels of the log domains' variables, by the part after the domain prefix
    "TERM": "Reported Term for the Adverse Event",
    "DECOD": "Dictionary-Derived Term",
    "SEV": "Severity/Intensity",
    "SER": "Serious Event",
    "ACN": "Action Taken with Study Treatment",
    "OUT": "Outcome of Adverse Event",
    "SCONG": "Congenital Anomaly or Birth Defect",
    "SDISAB": "Persist or Signif Disability/Incapacity",
    "SDTH": "Results in Death",
    "SHOSP": "Requires or Prolongs Hospitalization",
    "SLIFE": "Is Life Threatening",
    "SMIE": "Other Medically Important Serious Event",
    "TOXGR": "Standard Toxicity Grade",
    "TRT": "Reported Name of Drug, Med, or Therapy",
    "CLAS": "Medication Class",
    "CLASCD": "Medication Class Code",
    "INDC": "Indication",
    "ENRTPT": "End Relative to Reference Time Point",
    "DOSE": "Dose",
    "DOSU": "Dose Units",
    "DOSFRQ": "Dosing Frequency per Interval",
    "ROUTE": "Route of Administration",
    "ADJ": "Reason for Dose Adjustment",
}
LOG_NAME_LABELS = {"EXTRT": "Name of Treatment"}  # where one domain's label differs from the suffix's


def _log_label(name: str, rule: dict[str, Any]) -> str:
    return rule.get("label") or LOG_NAME_LABELS.get(name) or LOG_LABELS.get(name[2:], name)


@dataclass(frozen=True)
class Column:
    name: str
    label: str
    data_type: str  # Dataset-JSON: string, integer, double, date
    origin: str = COLLECTED
    method: str | None = None  # key of METHODS for derived columns
    source: str | None = None  # the eCRF item or FHIR element it comes from

    @property
    def numeric(self) -> bool:
        return self.data_type in ("integer", "double", "float", "decimal")


@dataclass
class Dataset:
    name: str
    label: str
    columns: list[Column]
    keys: tuple[str, ...] = ("STUDYID", "USUBJID")
    structure: str = "One record per subject"
    klass: str = "SPECIAL PURPOSE"
    rows: list[list[Any]] = field(default_factory=list)  # the current subject's rows only


def _c(
    name: str,
    label: str,
    data_type: str = "string",
    origin: str = ASSIGNED,
    method: str | None = None,
    source: str | None = None,
) -> Column:
    return Column(name, label, data_type, origin, method, source)


def _identity(domain: str, *, rdomain: bool = False) -> list[Column]:
    return [
        _c("STUDYID", "Study Identifier"),
        _c("RDOMAIN", "Related Domain Abbreviation") if rdomain else _c("DOMAIN", "Domain Abbreviation"),
        _c("USUBJID", "Unique Subject Identifier"),
    ]


def _visit_columns() -> list[Column]:
    return [_c("VISITNUM", "Visit Number", "integer", DERIVED, "VISITNUM"), _c("VISIT", "Visit Name")]


def datasets(mapping: Mapping) -> list[Dataset]:
    """The datasets the mapping produces, with their variables in SDTMIG order."""
    result = [
        Dataset(
            "DM",
            "Demographics",
            [
                *_identity("DM"),
                _c("SUBJID", "Subject Identifier for the Study"),
                _c("RFSTDTC", "Subject Reference Start Date/Time", "date", COLLECTED, source="randomisation_date"),
                _c("RFICDTC", "Date/Time of Informed Consent", "date", COLLECTED, source="consent_date"),
                _c("SITEID", "Study Site Identifier"),
                _c("AGE", "Age", "integer", DERIVED, "AGE"),
                _c("AGEU", "Age Units"),
                _c("SEX", "Sex", origin=COLLECTED, source="sex"),
                _c("ARMCD", "Planned Arm Code", origin=ASSIGNED, source="arm"),
                _c("ARM", "Description of Planned Arm"),
                _c("ACTARMCD", "Actual Arm Code", origin=ASSIGNED, source="arm"),
                _c("ACTARM", "Description of Actual Arm"),
                _c("ARMNRS", "Reason Arm and/or Actual Arm is Null", origin=DERIVED, method="ARMNRS"),
            ],
            keys=("STUDYID", "USUBJID"),
        )
    ]
    if mapping.ie is not None:
        result.append(
            Dataset(
                "IE",
                "Inclusion/Exclusion Criteria Not Met",
                [
                    *_identity("IE"),
                    _c("IESEQ", "Sequence Number", "integer", DERIVED, "SEQ"),
                    _c("IETESTCD", "Inclusion/Exclusion Criterion Short Name"),
                    _c("IETEST", "Inclusion/Exclusion Criterion"),
                    _c("IECAT", "Inclusion/Exclusion Category"),
                    _c("IEORRES", "I/E Criterion Original Result", origin=DERIVED, method="IE"),
                    _c("IESTRESC", "I/E Criterion Result in Std Format", origin=DERIVED, method="IE"),
                    *_visit_columns(),
                    _c("IEDTC", "Date/Time of Collection", "date", DERIVED, "IE"),
                    _c("IEDY", "Study Day of Collection", "integer", DERIVED, "DY"),
                ],
                keys=("STUDYID", "USUBJID", "IETESTCD"),
                structure="One record per inclusion/exclusion criterion not met per subject",
                klass="FINDINGS",
            )
        )
    if mapping.sv:
        result.append(
            Dataset(
                "SV",
                "Subject Visits",
                [
                    *_identity("SV"),
                    *_visit_columns(),
                    _c("SVSTDTC", "Start Date/Time of Visit", "date", COLLECTED, source="visit_date"),
                    _c("SVSTDY", "Study Day of Start of Visit", "integer", DERIVED, "DY"),
                ],
                keys=("STUDYID", "USUBJID", "VISITNUM"),
                structure="One record per subject per actual visit",
                klass="SPECIAL PURPOSE",
            )
        )
    for domain, spec in mapping.events.items():
        d = domain
        verb = "TRT" if domain in ("PR", "CM", "EX") else "TERM"
        columns = [
            *_identity(domain),
            _c(f"{d}SEQ", "Sequence Number", "integer", DERIVED, "SEQ"),
            _c(f"{d}{verb}", "Reported Name" if verb == "TRT" else "Reported Term", origin=COLLECTED),
            _c(f"{d}DECOD", "Standardized Term"),
            _c(f"{d}CAT", "Category"),
            *_visit_columns(),
            _c(f"{d}STDTC", "Start Date/Time", "date", COLLECTED),
            _c(f"{d}STDY", "Study Day of Start", "integer", DERIVED, "DY"),
        ]
        result.append(
            Dataset(
                domain,
                spec.get("label", domain),
                columns,
                keys=("STUDYID", "USUBJID", f"{d}SEQ"),
                structure="One record per event per subject",
                klass="INTERVENTIONS" if verb == "TRT" else "EVENTS",
            )
        )
    for domain, spec in mapping.logs.items():
        d = domain
        interventions = domain in ("CM", "EX", "PR")
        columns = [
            *_identity(domain),
            _c(f"{d}SEQ", "Sequence Number", "integer", DERIVED, "SEQ"),
            *(
                _c(
                    name,
                    _log_label(name, rule),
                    rule.get("type", "string"),
                    origin=COLLECTED,
                    source=rule.get("item") or rule.get("unit_of"),
                )
                for name, rule in (spec.get("variables") or {}).items()
            ),
            _c(f"{d}STDTC", "Start Date/Time", "date", COLLECTED, source=spec.get("start")),
            _c(f"{d}ENDTC", "End Date/Time", "date", COLLECTED, source=spec.get("end")),
            _c(f"{d}STDY", "Study Day of Start", "integer", DERIVED, "DY"),
            _c(f"{d}ENDY", "Study Day of End", "integer", DERIVED, "DY"),
        ]
        result.append(
            Dataset(
                domain,
                spec.get("label", domain),
                columns,
                keys=("STUDYID", "USUBJID", f"{d}SEQ"),
                structure=spec.get("structure")
                or f"One record per {'medication' if interventions else 'event'} per subject",
                klass="INTERVENTIONS" if interventions else "EVENTS",
            )
        )
    for domain, spec in mapping.findings.items():
        d = domain
        lab = domain == "LB"
        columns = [
            *_identity(domain),
            _c(f"{d}SEQ", "Sequence Number", "integer", DERIVED, "SEQ"),
            _c(f"{d}TESTCD", "Short Name of Measurement"),
            _c(f"{d}TEST", "Name of Measurement"),
            *([_c("LBCAT", "Category for Lab Test")] if lab else []),
            _c(f"{d}ORRES", "Result in Original Units", origin=COLLECTED),
            _c(f"{d}ORRESU", "Original Units", origin=COLLECTED),
            *([_c("LBORNRHI", "Reference Range Upper Limit in Orig Unit", origin=COLLECTED)] if lab else []),
            _c(f"{d}STRESC", "Result in Standard Format", origin=DERIVED, method="STRESN"),
            _c(f"{d}STRESN", "Numeric Result in Standard Units", "double", DERIVED, "STRESN"),
            _c(f"{d}STRESU", "Standard Units"),
            *(
                [
                    _c("LBSTNRHI", "Reference Range Upper Limit-Std Units", "double", DERIVED, "STRESN"),
                    _c("LBSPEC", "Specimen Type"),
                    _c("LBMETHOD", "Method of Test or Examination", origin=COLLECTED),
                ]
                if lab
                else []
            ),
            *_visit_columns(),
            _c(f"{d}DTC", "Date/Time of Collection", "date", COLLECTED),
            _c(f"{d}DY", "Study Day of Collection", "integer", DERIVED, "DY"),
        ]
        result.append(
            Dataset(
                domain,
                spec.get("label", domain),
                columns,
                keys=("STUDYID", "USUBJID", f"{d}TESTCD", "VISITNUM"),
                structure="One record per test per visit per subject",
                klass="FINDINGS",
            )
        )
    parents = [dataset.name for dataset in result if dataset.name not in ("DM", "IE", "SV")]
    for parent in (["DM"] if mapping.suppdm else []) + parents:
        result.append(
            Dataset(
                f"SUPP{parent}",
                f"Supplemental Qualifiers for {parent}",
                [
                    *_identity(parent, rdomain=True),
                    _c("IDVAR", "Identifying Variable"),
                    _c("IDVARVAL", "Identifying Variable Value"),
                    _c("QNAM", "Qualifier Variable Name"),
                    _c("QLABEL", "Qualifier Variable Label"),
                    _c("QVAL", "Data Value"),
                    _c("QORIG", "Origin"),
                ],
                keys=("STUDYID", "RDOMAIN", "USUBJID", "IDVAR", "IDVARVAL", "QNAM"),
                structure="One record per supplemental qualifier per related parent domain record",
                klass="RELATIONSHIP",
            )
        )
    return result


class Builder:
    """Makes one subject's rows for every dataset."""

    def __init__(self, study: StudyDef, mapping: Mapping, deid: Deidentifier | None):
        self.study, self.mapping, self.deid = study, mapping, deid
        self.visit_number: dict[str, int | None] = {
            visit.id: number for number, visit in enumerate(study.visits, start=1)
        }
        self.visit_label = {visit.id: visit.label for visit in study.visits}
        self.visit_label[UNSCHEDULED] = "UNSCHEDULED"  # EHR results outside every window: VISITNUM null
        self.arm_label = {arm.id: arm.label for arm in study.arms}
        self.items = {item.id: item for form in study.forms for item in form.items}

    # -- keys, dates, references ---------------------------------------------------------------

    def subject_key(self, subject: SubjectRecord) -> str:
        return self.deid.pseudonym(subject.patient_id) if self.deid else subject.subject_id

    def usubjid(self, subject: SubjectRecord) -> str:
        return f"{self.study.id}-{self.subject_key(subject)}"

    def dtc(self, subject: SubjectRecord, value: Any) -> str | None:
        day = parse_date(value) if not isinstance(value, date) else value
        if day is None:
            return None
        text = day.isoformat()
        return self.deid.shift(text, self.deid.shift_days(subject.patient_id)) if self.deid else text

    def reference(self, entry: dict[str, Any]) -> str | None:
        resource = entry.get("resource")
        if not resource:
            return None
        kind, _, resource_id = resource.partition("/")
        if self.deid:
            resource_id = self.deid.pseudonym(resource_id)
        return f"{kind}/{resource_id}/_history/{entry.get('resource_version')}"

    @staticmethod
    def study_day(day: date | None, reference: date | None) -> int | None:
        if day is None or reference is None:
            return None
        delta = (day - reference).days
        return delta + 1 if delta >= 0 else delta

    # -- rows ------------------------------------------------------------------------------------

    def rows(self, subject: SubjectRecord) -> dict[str, list[list[Any]]]:
        out: dict[str, list[list[Any]]] = {}
        usubjid = self.usubjid(subject)
        allocation = self.allocation(subject)
        reference = self._dm_value(subject, allocation, "RFSTDTC")
        reference = reference if isinstance(reference, date) else parse_date(reference)
        out["DM"] = [self._dm(subject, usubjid, reference, allocation)]
        if self.mapping.suppdm:
            out["SUPPDM"] = self._suppdm(usubjid, allocation)
        if self.mapping.ie is not None:
            out["IE"] = self._ie(subject, usubjid, reference)
        if self.mapping.sv:
            visits: dict[str, date] = {}
            for record in subject.forms:
                if record.visit_date is not None and self.visit_number.get(record.visit_id) is not None:
                    visits[record.visit_id] = min(record.visit_date, visits.get(record.visit_id, record.visit_date))
            out["SV"] = [
                [
                    self.study.id,
                    "SV",
                    usubjid,
                    self.visit_number[visit_id],
                    self.visit_label[visit_id],
                    self.dtc(subject, day),
                    self.study_day(day, reference),
                ]
                for visit_id, day in sorted(visits.items(), key=lambda pair: self.visit_number[pair[0]])
            ]
        for domain, spec in self.mapping.events.items():
            rows, supp = [], []
            for item_id, rule in spec["items"].items():
                for record in subject.forms:
                    entry = record.values.get(item_id)
                    if entry is None or entry.get("value") is None:
                        continue
                    day = parse_date(entry["value"])
                    seq = len(rows) + 1
                    rows.append(
                        [
                            self.study.id,
                            domain,
                            usubjid,
                            seq,
                            rule.get("TERM") or rule.get("TRT"),
                            rule.get("DECOD"),
                            rule.get("CAT"),
                            self.visit_number.get(record.visit_id),
                            self.visit_label.get(record.visit_id),
                            self.dtc(subject, day),
                            self.study_day(day, reference),
                        ]
                    )
                    supp += self._origin(domain, usubjid, seq, entry)
                    break  # a subject-level event: once
            rule = spec.get("allocation")
            if rule and allocation and allocation.get("randomisation_date"):
                day = allocation["randomisation_date"]
                record, entry = self._allocation_record(subject)
                seq = len(rows) + 1
                rows.append(
                    [
                        self.study.id,
                        domain,
                        usubjid,
                        seq,
                        rule.get("TERM") or rule.get("TRT"),
                        rule.get("DECOD"),
                        rule.get("CAT"),
                        self.visit_number.get(record.visit_id) if record else None,
                        self.visit_label.get(record.visit_id) if record else None,
                        self.dtc(subject, day),
                        self.study_day(day, reference),
                    ]
                )
                supp += self._origin(domain, usubjid, seq, entry) if entry else []
            out[domain], out[f"SUPP{domain}"] = rows, supp
        for domain, spec in self.mapping.logs.items():
            out[domain], out[f"SUPP{domain}"] = self._log(domain, spec, subject, usubjid, reference)
        for domain, spec in self.mapping.findings.items():
            rows, supp = [], []
            for record in subject.forms:
                for item_id, rule in spec["items"].items():
                    entry = record.values.get(item_id)
                    if entry is None or entry.get("value") is None:
                        continue
                    seq = len(rows) + 1
                    row, extra = self._finding(domain, rule, subject, usubjid, seq, record, item_id, entry, reference)
                    rows.append(row)
                    supp += self._origin(domain, usubjid, seq, entry) + extra
            out[domain], out[f"SUPP{domain}"] = rows, supp
        return out

    def _ie(self, subject: SubjectRecord, usubjid: str, reference: date | None) -> list[list[Any]]:
        state = subject.eligibility
        if state is None:
            return []
        evaluation = json.loads(state.frozen_result or state.result)
        day = parse_date(evaluation.get("reference_date"))
        visit_id = self.mapping.ie.get("visit")
        described = {criterion.id: criterion.description for criterion in self.study.criteria}
        rows = []
        for criterion in evaluation.get("criteria", []):
            inclusion = criterion["kind"] == "inclusion"
            if criterion["result"] != ("not_met" if inclusion else "met"):
                continue
            answer = "N" if inclusion else "Y"
            rows.append(
                [
                    self.study.id,
                    "IE",
                    usubjid,
                    len(rows) + 1,
                    criterion["id"].split("_", 1)[0][:8],
                    described.get(criterion["id"], criterion["id"]),
                    "INCLUSION" if inclusion else "EXCLUSION",
                    answer,
                    answer,
                    self.visit_number.get(visit_id),
                    self.visit_label.get(visit_id),
                    self.dtc(subject, day),
                    self.study_day(day, reference),
                ]
            )
        return rows

    def allocation(self, subject: SubjectRecord) -> dict[str, Any] | None:
        """The system's allocation, else a version-1 one entered into the form (the mapping's `allocation`
        items: arm and date, no number or stratum), else None."""
        if subject.allocation is not None:
            return subject.allocation
        items = self.mapping.allocation
        arm = subject.value(items["arm"]) if items.get("arm") else None
        if arm is None:
            return None
        day = subject.value(items["date"]) if items.get("date") else None
        return {
            "method": "entered",
            "arm": arm["value"],
            "randomisation_number": None,
            "stratum": None,
            "randomisation_date": parse_date(day["value"]) if day else None,
        }

    def _allocation_record(self, subject: SubjectRecord) -> tuple[FormRecord | None, dict[str, Any] | None]:
        """The form record (and value) the allocation was written into: its visit and FHIR origin."""
        for item_id in (self.mapping.allocation.get("date"), self.mapping.allocation.get("arm")):
            for record in subject.forms:
                entry = record.values.get(item_id) if item_id else None
                if entry is not None and entry.get("value") is not None:
                    return record, entry
        return None, None

    def _dm_value(self, subject: SubjectRecord, allocation: dict[str, Any] | None, variable: str) -> Any:
        rule = self.mapping.dm.get(variable)
        if not rule:
            return None
        if "allocation" in rule:
            return (allocation or {}).get(rule["allocation"])
        entry = subject.value(rule["item"]) if rule.get("item") else None
        return None if entry is None else entry["value"]

    def _dm(
        self, subject: SubjectRecord, usubjid: str, reference: date | None, allocation: dict[str, Any] | None
    ) -> list[Any]:
        dm = self.mapping.dm
        age = None
        rule = dm.get("AGE")
        if rule:
            born, at = subject.value(rule["born"]), subject.value(rule["at"])
            born_day, at_day = (parse_date(born["value"]) if born else None), (parse_date(at["value"]) if at else None)
            if born_day and at_day:
                age = self.deid.age(born_day, at_day)[0] if self.deid else completed_years(born_day, at_day)
        sex = self._dm_value(subject, allocation, "SEX")
        codes = (dm.get("SEX") or {}).get("codes") or {}

        def arm(variable: str) -> str | None:
            value = self._dm_value(subject, allocation, variable)
            if value is None:
                return None
            return self.arm_label.get(value, value) if (dm.get(variable) or {}).get("arm_label") else value

        reason = None
        if allocation is None and dm.get("ARMNRS"):
            ineligible = subject.eligibility is not None and subject.eligibility.status == "ineligible"
            reason = dm["ARMNRS"].get("ineligible" if ineligible else "otherwise")
        return [
            self.study.id,
            "DM",
            usubjid,
            self.subject_key(subject),
            self.dtc(subject, reference),
            self.dtc(subject, self._dm_value(subject, allocation, "RFICDTC")),
            subject.site,
            age,
            "YEARS" if age is not None else None,
            codes.get(sex, sex) if sex is not None else None,
            arm("ARMCD"),
            arm("ARM"),
            arm("ACTARMCD"),
            arm("ACTARM"),
            reason,
        ]

    def _suppdm(self, usubjid: str, allocation: dict[str, Any] | None) -> list[list[Any]]:
        """SUPPDM: the allocation's qualifiers SDTM DM has no variable for (number, stratum). For sponsors,
        the ones the mapping marks `identifying` (the number, written on the site's records) are left out."""
        rows = []
        for qnam, rule in self.mapping.suppdm.items():
            value = (allocation or {}).get(rule.get("allocation", ""))
            if value is None or (self.deid and rule.get("identifying")):
                continue
            rows.append(
                [
                    self.study.id,
                    "DM",
                    usubjid,
                    None,
                    None,
                    qnam,
                    rule.get("label", qnam),
                    str(value),
                    rule.get("origin", ASSIGNED),
                ]
            )
        return rows

    def _log(
        self, domain: str, spec: dict[str, Any], subject: SubjectRecord, usubjid: str, reference: date | None
    ) -> tuple[list[list[Any]], list[list[Any]]]:
        """One record per entry of the log form (collect leaves withdrawn entries out). For sponsors, items of
        type text (free text: kept at the site) are never read."""
        withheld = {item.id for item in self.study.form(spec["form"]).items if site_only(item)}
        variables, rows, supp = spec.get("variables") or {}, [], []

        def read(record: FormRecord, rule: dict[str, Any]) -> Any:
            if rule.get("unit_of"):  # the unit of a quantity item (its canonical unit), as a CT unit
                entry = record.values.get(rule["unit_of"]) or {}
                if entry.get("value") is None:
                    return None
                return self.mapping.unit(entry.get("unit")) or None
            item_id = rule.get("item")
            if not item_id or (self.deid and item_id in withheld):
                return None
            entry = record.values.get(item_id) or {}
            value = entry.get("value")
            if value is None:
                return None
            if rule.get("type") in ("double", "integer"):  # a number, exactly as stored (canonical unit)
                number = _decimal(entry.get("exact") if entry.get("exact") is not None else value)
                if number is None:
                    return None
                return float(number) if rule["type"] == "double" else int(number)
            if "has" in rule:
                return "Y" if rule["has"] in (value if isinstance(value, list) else [value]) else "N"
            codes = rule.get("codes")
            if codes is not None:
                return codes.get(str(value).lower() if isinstance(value, bool) else value)
            return _text(value)

        for record in subject.entries:
            if record.form.id != spec["form"]:
                continue
            seq = len(rows) + 1
            values = {name: read(record, rule) for name, rule in variables.items()}
            for name, rule in variables.items():
                if values[name] is None and rule.get("otherwise"):
                    values[name] = values.get(rule["otherwise"])
            start, end = (
                parse_date((record.values.get(spec.get(key) or "") or {}).get("value")) for key in ("start", "end")
            )
            single = spec.get("single_dose")  # a single administration (an infusion) ends when it starts
            if end is None and single and (record.values.get(single["item"]) or {}).get("value") in single["values"]:
                end = start
            rows.append(
                [
                    self.study.id,
                    domain,
                    usubjid,
                    seq,
                    *values.values(),
                    self.dtc(subject, start),
                    self.dtc(subject, end),
                    self.study_day(start, reference),
                    self.study_day(end, reference),
                ]
            )
            origin = next((entry for entry in record.values.values() if entry.get("resource")), None)
            supp += self._origin(domain, usubjid, seq, origin) if origin else []
            for qnam, rule in (spec.get("supp") or {}).items():
                value = read(record, rule)
                if value is not None:
                    supp.append(
                        [
                            self.study.id,
                            domain,
                            usubjid,
                            f"{domain}SEQ",
                            str(seq),
                            qnam,
                            rule.get("label", qnam),
                            value,
                            COLLECTED,
                        ]
                    )
        return rows, supp

    def _finding(
        self,
        domain: str,
        rule: dict[str, Any],
        subject: SubjectRecord,
        usubjid: str,
        seq: int,
        record: FormRecord,
        item_id: str,
        entry: dict[str, Any],
        reference: date | None,
    ) -> tuple[list[Any], list[list[Any]]]:
        exact = entry.get("exact") if entry.get("exact") is not None else str(entry["value"])
        entered = entry.get("entered") or {}
        original = entered.get("value", entry["value"])
        canonical_unit = entry.get("unit")
        original_unit = entered.get("unit") or canonical_unit
        number = _decimal(exact)
        day = parse_date(entry.get("effective")) or record.visit_date
        row: list[Any] = [self.study.id, domain, usubjid, seq, rule["TESTCD"], rule["TEST"]]
        extra: list[list[Any]] = []
        lab = domain == "LB"
        if lab:
            row.append(rule.get("CAT"))
        row += [_text(original), self.mapping.unit(original_unit)]
        if lab:
            uln, source = None, None
            if rule.get("uln"):
                if entry.get("uln") is not None:
                    uln, source = _decimal(entry["uln"]), "REPORT"
                elif item_id in self.study.uln_defaults:
                    uln, source = Decimal(self.study.uln_defaults[item_id]), "DEFAULT"
            original_number = _decimal(original)
            factor = number / original_number if number is not None and original_number else None
            uln_original = uln / factor if uln is not None and factor else uln
            row.append(format(uln_original.normalize(), "f") if uln_original is not None else None)
            if source:
                extra.append(
                    [
                        self.study.id,
                        domain,
                        usubjid,
                        f"{domain}SEQ",
                        str(seq),
                        "ULNSRC",
                        "Source of the ULN",
                        source,
                        ASSIGNED,
                    ]
                )
        row += [exact, float(number) if number is not None else None, self.mapping.unit(canonical_unit)]
        if lab:
            method_item = rule.get("METHOD_ITEM")
            method = record.values.get(method_item, {}).get("value") if method_item else None
            row += [
                float(uln) if uln is not None else None,
                rule.get("SPEC"),
                str(method).upper() if method is not None else rule.get("METHOD"),
            ]
        row += [
            self.visit_number.get(record.visit_id),
            self.visit_label.get(record.visit_id),
            self.dtc(subject, day),
            self.study_day(day, reference),
        ]
        return row, extra

    def _origin(self, domain: str, usubjid: str, seq: int, entry: dict[str, Any]) -> list[list[Any]]:
        reference = self.reference(entry)
        if reference is None:
            return []
        return [
            [
                self.study.id,
                domain,
                usubjid,
                f"{domain}SEQ",
                str(seq),
                "FHIRREF",
                "FHIR resource and version",
                reference,
                ASSIGNED,
            ]
        ]


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def subjects_rows(builder: Builder, subjects: Iterator[SubjectRecord]) -> Iterator[dict[str, list[list[Any]]]]:
    for subject in subjects:
        yield builder.rows(subject)
