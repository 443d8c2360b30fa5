"""CDISC ODM 1.3.2 from the study definition and the store. `Study`/`MetaDataVersion` come from `forms/` (a
StudyEventDef per visit, FormDef, ItemGroupDef, ItemDef with data type, MeasurementUnit, CodeList per code item,
RangeCheck per hard and soft bound, ConditionDef per `enable_when`). `ClinicalData` has a SubjectData per subject
with its site: the archive (FileType Transactional, Archival Yes) holds every version of every value as its own
ItemData with the AuditRecord of the hash-chained audit trail (user, site, UTC time, reason, source door), the
latest e-signature per form as Signature (SignatureDef: its meaning), and form status changes (SDV, lock) and
queries as Annotations; the snapshot (FileType Snapshot) holds the current values. AdminData lists the users as
pseudonymous ids and the sites. For sponsors the de-identification of the other exports applies: pseudonymous
subjects, users and resources, dates and time stamps shifted per subject, no identifier-bearing item, no free
text (reasons, query text, signature meanings)."""

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from lxml import etree

from ecrf.audit.models import AuditEntry
from ecrf.cdisc.collect import SubjectRecord
from ecrf.crf.schedule import UNSCHEDULED
from ecrf.export.deidentify import Deidentifier, site_only
from study_model.definitions import FormDef, ItemDef, StudyDef

NS = "http://www.cdisc.org/ns/odm/v1.3"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DATA_TYPES = {
    "boolean": "boolean",
    "code": "text",
    "date": "date",
    "integer": "integer",
    "quantity": "float",
    "decimal": "float",
    "text": "text",
    "string": "text",
}
ITEM_ACTIONS = ("create", "update", "delete")
LOG_EVENT = "LOG"  # the visit key of log-form entries (ecrf.crf.locate.LOG_VISIT): StudyEventOID SE.LOG
STUDY_LOCATION = "LOC.STUDY"


def _e(parent: etree._Element | None, tag: str, **attributes: Any) -> etree._Element:
    attrs = {k: str(v) for k, v in attributes.items() if v is not None}
    if parent is None:
        return etree.Element(f"{{{NS}}}{tag}", attrs, nsmap={None: NS})
    return etree.SubElement(parent, f"{{{NS}}}{tag}", attrs)


def _translated(parent: etree._Element, tag: str, text: str) -> etree._Element:
    node = _e(parent, tag)
    _e(node, "TranslatedText", **{XML_LANG: "en"}).text = text
    return node


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def items_of(form: FormDef, deid: Deidentifier | None) -> list[ItemDef]:
    return [item for item in form.items if not (deid is not None and site_only(item))]


def unit_oid(unit: str) -> str:
    return "MU." + hashlib.sha256(unit.encode()).hexdigest()[:12]


def metadata(study: StudyDef, mdv: str, deid: Deidentifier | None) -> etree._Element:
    root = _e(None, "Study", OID=study.id)
    glob = _e(root, "GlobalVariables")
    _e(glob, "StudyName").text = study.id
    _e(glob, "StudyDescription").text = study.title
    _e(glob, "ProtocolName").text = study.id
    units = sorted({item.unit for form in study.forms for item in form.items if item.unit})
    if units:
        basic = _e(root, "BasicDefinitions")
        for unit in units:
            _translated(_e(basic, "MeasurementUnit", OID=unit_oid(unit), Name=unit), "Symbol", unit)
    version = _e(root, "MetaDataVersion", OID=mdv, Name=f"{study.id} eCRF" + (" (de-identified)" if deid else ""))
    protocol = _e(version, "Protocol")
    for number, visit in enumerate(study.visits, start=1):
        _e(protocol, "StudyEventRef", StudyEventOID=f"SE.{visit.id}", OrderNumber=number, Mandatory="No")
    _e(protocol, "StudyEventRef", StudyEventOID=f"SE.{UNSCHEDULED}", OrderNumber=len(study.visits) + 1, Mandatory="No")
    logs = [form for form in study.forms if form.kind == "log"]
    if logs:
        _e(
            protocol,
            "StudyEventRef",
            StudyEventOID=f"SE.{LOG_EVENT}",
            OrderNumber=len(study.visits) + 2,
            Mandatory="No",
        )
    for visit in study.visits:
        event = _e(version, "StudyEventDef", OID=f"SE.{visit.id}", Name=visit.label, Repeating="No", Type="Scheduled")
        for number, form in enumerate(f for f in study.forms if visit.id in f.visits):
            _e(event, "FormRef", FormOID=f"F.{form.id}", OrderNumber=number + 1, Mandatory="No")
    event = _e(
        version,
        "StudyEventDef",
        OID=f"SE.{UNSCHEDULED}",
        Name="Values that came through the FHIR door",
        Repeating="Yes",
        Type="Unscheduled",
    )
    for number, form in enumerate(study.forms, start=1):
        _e(event, "FormRef", FormOID=f"F.{form.id}", OrderNumber=number, Mandatory="No")
    if logs:  # the log forms' entries belong to no visit: one event, each entry a FormData with its FormRepeatKey
        event = _e(
            version,
            "StudyEventDef",
            OID=f"SE.{LOG_EVENT}",
            Name="Log forms (entries tied to no visit)",
            Repeating="No",
            Type="Common",
        )
        for number, form in enumerate(logs, start=1):
            _e(event, "FormRef", FormOID=f"F.{form.id}", OrderNumber=number, Mandatory="No")
    for form in study.forms:
        node = _e(
            version, "FormDef", OID=f"F.{form.id}", Name=form.title, Repeating="Yes" if form.has_entries else "No"
        )
        _e(node, "ItemGroupRef", ItemGroupOID=f"IG.{form.id}", Mandatory="Yes")
    conditions = []
    for form in study.forms:
        group = _e(version, "ItemGroupDef", OID=f"IG.{form.id}", Name=form.title, Repeating="No")
        for number, item in enumerate(items_of(form, deid), start=1):
            condition = None
            if item.enable_when is not None:
                condition = f"COND.{form.id}.{item.id}"
                conditions.append((condition, item, form.id))
            _e(
                group,
                "ItemRef",
                ItemOID=f"IT.{form.id}.{item.id}",
                OrderNumber=number,
                Mandatory="Yes" if item.required else "No",
                CollectionExceptionConditionOID=condition,
            )
    for form in study.forms:
        for item in items_of(form, deid):
            node = _e(
                version,
                "ItemDef",
                OID=f"IT.{form.id}.{item.id}",
                Name=item.id,
                DataType=DATA_TYPES.get(item.type, "text"),
            )
            _translated(node, "Question", item.label)
            if item.unit:
                _e(node, "MeasurementUnitRef", MeasurementUnitOID=unit_oid(item.unit))
            for bound, comparator, soft_hard in (
                (item.hard_min, "GE", "Hard"),
                (item.hard_max, "LE", "Hard"),
                (item.soft_min, "GE", "Soft"),
                (item.soft_max, "LE", "Soft"),
            ):
                if bound is not None:
                    check = _e(node, "RangeCheck", Comparator=comparator, SoftHard=soft_hard)
                    _e(check, "CheckValue").text = str(bound)
            if item.values:
                _e(node, "CodeListRef", CodeListOID=f"CL.{form.id}.{item.id}")
    for form in study.forms:
        for item in items_of(form, deid):
            if item.values:
                codes = _e(version, "CodeList", OID=f"CL.{form.id}.{item.id}", Name=item.id, DataType="text")
                for value in item.values:
                    _translated(_e(codes, "CodeListItem", CodedValue=value), "Decode", str(value))
    for oid, item, form_id in conditions:
        node = _e(version, "ConditionDef", OID=oid, Name=f"{item.id} not collected")
        _translated(
            node, "Description", f"{item.id} is collected only when {item.enable_when.item} = {item.enable_when.equals}"
        )
        expected = (
            str(item.enable_when.equals).lower()
            if isinstance(item.enable_when.equals, bool)
            else item.enable_when.equals
        )
        _e(
            node, "FormalExpression", Context="XPath"
        ).text = f"../ItemData[@ItemOID='IT.{form_id}.{item.enable_when.item}']/@Value != '{expected}'"
    return root


class Writer:
    """Writes one ODM file: ClinicalData is spooled subject by subject, then Study, AdminData and it are joined."""

    def __init__(
        self, path: Path, study: StudyDef, mdv: str, deid: Deidentifier | None, *, archive: bool, created: datetime
    ):
        self.path, self.study, self.mdv, self.deid, self.archive, self.created = (
            path,
            study,
            mdv,
            deid,
            archive,
            created,
        )
        self.spool_path = path.with_name(f".{path.name}.spool")
        self.spool: BinaryIO = self.spool_path.open("wb")
        self.users: dict[str, str] = {}  # UserOID -> login name (identified only)
        self.locations: set[str] = set()
        self.meanings: dict[str, str] = {}
        self.subjects = 0
        self.values = 0
        self.forms = {form.id: form for form in study.forms}

    # -- keys -------------------------------------------------------------------------------------

    def user(self, sub: str) -> str:
        key = self.deid.pseudonym(f"user:{sub}") if self.deid else hashlib.sha256(sub.encode()).hexdigest()[:32]
        oid = f"U.{key}"
        self.users.setdefault(oid, "" if self.deid else sub)
        return oid

    def location(self, site: str | None) -> str:
        oid = f"LOC.{site}" if site else STUDY_LOCATION
        self.locations.add(oid)
        return oid

    def subject_key(self, subject: SubjectRecord) -> str:
        return self.deid.pseudonym(subject.patient_id) if self.deid else subject.subject_id

    def moment(self, subject: SubjectRecord, at: datetime) -> str:
        if self.deid:
            at = at + timedelta(days=self.deid.shift_days(subject.patient_id))
        return _instant(at)

    def value(self, subject: SubjectRecord, item: ItemDef, raw: Any) -> str | None:
        if raw is None:
            return None
        text = raw if isinstance(raw, str) else ("true" if raw is True else "false" if raw is False else str(raw))
        if item.type in ("quantity", "decimal", "integer") and " " in text:
            text = text.split(" ", 1)[0]  # the audit trail's "180 10*9/L (ULN 250)": the value in the canonical unit
        if item.type == "date" and self.deid:
            text = self.deid.shift(text, self.deid.shift_days(subject.patient_id)) or ""
        return text

    # -- subjects ---------------------------------------------------------------------------------

    def add(self, subject: SubjectRecord, trail: list[AuditEntry]) -> None:
        node = _e(None, "SubjectData", SubjectKey=self.subject_key(subject), TransactionType="Insert")
        _e(node, "SiteRef", LocationOID=self.location(subject.site))
        if self.archive:
            self._archive(node, subject, trail)
        else:
            self._snapshot(node, subject)
        self.spool.write(etree.tostring(node) + b"\n")
        self.subjects += 1

    def _form_node(
        self, events: dict, node: etree._Element, visit_id: str, form_id: str, repeat: str | None = None
    ) -> etree._Element:
        """The FormData of a visit's form, or of one entry (`repeat`: its entry id, the FormRepeatKey)."""
        key = (visit_id, form_id, repeat)
        if key not in events:
            event = events.get(visit_id)
            if event is None:
                event = events[visit_id] = _e(node, "StudyEventData", StudyEventOID=f"SE.{visit_id}")
            events[key] = {
                "form": _e(event, "FormData", FormOID=f"F.{form_id}", FormRepeatKey=repeat),
                "group": None,
                "notes": 0,
            }
        return events[key]

    def _snapshot(self, node: etree._Element, subject: SubjectRecord) -> None:
        events: dict = {}
        for record in [*subject.forms, *subject.entries]:
            repeat = record.instance.entry_id if record.instance is not None and record.instance.entry_id else None
            slot = self._form_node(events, node, record.visit_id, record.form.id, repeat)
            group = _e(slot["form"], "ItemGroupData", ItemGroupOID=f"IG.{record.form.id}", TransactionType="Insert")
            for item in items_of(record.form, self.deid):
                entry = record.values.get(item.id)
                if entry is None or entry.get("value") is None:
                    continue
                value = self.value(subject, item, entry.get("exact", entry["value"]))
                data = _e(
                    group, "ItemData", ItemOID=f"IT.{record.form.id}.{item.id}", Value=value, TransactionType="Insert"
                )
                if item.unit:
                    _e(data, "MeasurementUnitRef", MeasurementUnitOID=unit_oid(item.unit))
                self.values += 1

    def _archive(self, node: etree._Element, subject: SubjectRecord, trail: list[AuditEntry]) -> None:
        events: dict = {}
        seen: set[tuple] = set()
        signatures: dict[tuple[str, str, str | None], AuditEntry] = {}
        for entry in trail:
            if entry.form_id is None or entry.form_id not in self.forms:
                continue
            form = self.forms[entry.form_id]
            # an entry's values and status changes go to its own FormData (FormRepeatKey: the entry id), under its
            # visit, or SE.LOG for a log form; a log form's values that belong to no entry are not carried
            owner = subject.entry_keys.get((entry.resource or "").partition("/")[2]) if form.has_entries else None
            if form.kind == "log" and owner is None:
                continue
            repeat = owner[1] if owner else None
            # a value pushed through /fhir has no visit of its own (it is placed on read): the unscheduled event
            visit_id = (
                owner[0] if owner else entry.visit_id or (form.visits[0] if entry.source == "form" else UNSCHEDULED)
            )
            if entry.item_id is not None and entry.action in ITEM_ACTIONS:
                item = next((i for i in items_of(form, self.deid) if i.id == entry.item_id), None)
                if item is None:
                    continue
                slot = self._form_node(events, node, visit_id, form.id, repeat)
                if slot["group"] is None:
                    slot["group"] = _e(
                        slot["form"], "ItemGroupData", ItemGroupOID=f"IG.{form.id}", TransactionType="Upsert"
                    )
                key = (visit_id, form.id, item.id, repeat or (entry.resource if visit_id == UNSCHEDULED else None))
                value = self.value(subject, item, entry.new_value)
                kind = "Remove" if value is None and key in seen else "Update" if key in seen else "Insert"
                seen.add(key)
                data = _e(
                    slot["group"],
                    "ItemData",
                    ItemOID=f"IT.{form.id}.{item.id}",
                    TransactionType=kind,
                    Value=value,
                    IsNull="Yes" if value is None else None,
                )
                self._audit(data, subject, entry)
                if item.unit and value is not None:
                    _e(data, "MeasurementUnitRef", MeasurementUnitOID=unit_oid(item.unit))
                self.values += 1
            elif entry.action == "form.sign":
                signatures[(visit_id, form.id, repeat)] = entry
                self._note(events, node, subject, visit_id, form.id, entry, repeat)
            elif entry.action.startswith("form.") or entry.action.startswith("query."):
                self._note(events, node, subject, visit_id, form.id, entry, repeat)
        for (visit_id, form_id, repeat), entry in signatures.items():
            slot = self._form_node(events, node, visit_id, form_id, repeat)
            meaning = "" if self.deid else (entry.new_value or "").partition(": ")[2]
            oid = "SD." + hashlib.sha256(meaning.encode()).hexdigest()[:12]
            self.meanings[oid] = meaning or "Electronic signature of the investigator"
            signature = _e(None, "Signature")
            _e(signature, "UserRef", UserOID=self.user(entry.actor_sub))
            _e(signature, "LocationRef", LocationOID=self.location(entry.actor_site or subject.site))
            _e(signature, "SignatureRef", SignatureOID=oid)
            _e(signature, "DateTimeStamp").text = self.moment(subject, entry.at)
            slot["form"].insert(0, signature)  # FormData: (AuditRecord?, Signature?, ..., Annotation*, ItemGroupData*)

    def _audit(self, parent: etree._Element, subject: SubjectRecord, entry: AuditEntry) -> None:
        record = _e(parent, "AuditRecord")
        _e(record, "UserRef", UserOID=self.user(entry.actor_sub))
        _e(record, "LocationRef", LocationOID=self.location(entry.actor_site or subject.site))
        _e(record, "DateTimeStamp").text = self.moment(subject, entry.at)
        if entry.reason and not self.deid:
            _e(record, "ReasonForChange").text = entry.reason
        resource = entry.resource or ""
        if self.deid and "/" in resource:
            kind, _, resource_id = resource.partition("/")
            resource = f"{kind}/{self.deid.pseudonym(resource_id)}"
        _e(
            record, "SourceID"
        ).text = f"audit:{entry.seq} door:{entry.source} {resource}/_history/{entry.resource_version}"

    def _note(
        self,
        events: dict,
        node: etree._Element,
        subject: SubjectRecord,
        visit_id: str,
        form_id: str,
        entry: AuditEntry,
        repeat: str | None = None,
    ) -> None:
        slot = self._form_node(events, node, visit_id, form_id, repeat)
        slot["notes"] += 1
        annotation = _e(None, "Annotation", SeqNum=slot["notes"])
        who = self.user(entry.actor_sub)
        text = f"{entry.action} {entry.old_value or ''} -> {entry.new_value or ''} by {who} at {self.moment(subject, entry.at)}"
        if entry.action == "form.sign" and self.deid:
            text = f"form.sign by {who} at {self.moment(subject, entry.at)}"
        if entry.action.startswith("query."):
            text = f"{entry.action} ({entry.old_value or 'new'} -> {entry.new_value}) by {who} at {self.moment(subject, entry.at)}"
            if entry.item_id:
                text += f" on item {entry.item_id}"
            if entry.reason and not self.deid:
                text += f": {entry.reason}"
        elif entry.reason and not self.deid:
            text += f" ({entry.reason})"
        _e(annotation, "Comment", SponsorOrSite="Sponsor" if entry.action.startswith("query.") else "Site").text = text
        children = list(slot["form"])
        position = next((i for i, child in enumerate(children) if child.tag == f"{{{NS}}}ItemGroupData"), len(children))
        slot["form"].insert(position, annotation)

    # -- the file -----------------------------------------------------------------------------------

    def finish(self, chain_head: tuple[int, str]) -> None:
        self.spool.close()
        root = _e(
            None,
            "ODM",
            FileType="Transactional" if self.archive else "Snapshot",
            Archival="Yes" if self.archive else None,
            Granularity="All",
            FileOID=f"{self.study.id}.odm.{self.created.strftime('%Y%m%dT%H%M%S')}",
            CreationDateTime=_instant(self.created),
            ODMVersion="1.3.2",
            Originator="ecrf",
            SourceSystem="ecrf",
            SourceSystemVersion="0.1.0",
            Description=f"audit chain head seq {chain_head[0]} hash {chain_head[1]}",
        )
        root.append(metadata(self.study, self.mdv, self.deid))
        admin = _e(root, "AdminData", StudyOID=self.study.id)
        for oid, login in sorted(self.users.items()):
            user = _e(admin, "User", OID=oid, UserType="Other")
            if login:
                _e(user, "LoginName").text = login
        for oid in sorted(self.locations | {STUDY_LOCATION}):
            location = _e(
                admin, "Location", OID=oid, Name=oid[4:], LocationType="Site" if oid != STUDY_LOCATION else "Sponsor"
            )
            _e(
                location,
                "MetaDataVersionRef",
                StudyOID=self.study.id,
                MetaDataVersionOID=self.mdv,
                EffectiveDate=self.created.date().isoformat(),
            )
        for oid, meaning in sorted(self.meanings.items()):
            definition = _e(admin, "SignatureDef", OID=oid, Methodology="Electronic")
            _e(definition, "Meaning").text = meaning
            _e(definition, "LegalReason").text = "21 CFR Part 11 electronic signature"
        if not len(admin):
            root.remove(admin)
        _e(root, "ClinicalData", StudyOID=self.study.id, MetaDataVersionOID=self.mdv)
        text = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        head, _, tail = text.rpartition(b"/>")  # the empty ClinicalData is the last element: open it up
        with self.path.open("wb") as out:
            out.write(head + b">\n")
            with self.spool_path.open("rb") as spooled:
                while chunk := spooled.read(1 << 20):
                    out.write(chunk)
            out.write(b"</ClinicalData>" + tail.replace(b"</ODM>", b"</ODM>", 1))
        self.spool_path.unlink()


def chain_of(entries: Iterable[AuditEntry]) -> list[tuple[int, str]]:
    return [(entry.seq, entry.hash) for entry in entries]
