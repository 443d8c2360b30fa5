"""The versioned clinical store: every write is a new version, with who, when, why and where from.

Both doors (eCRF forms and FHIR REST) write and read through this class; site scoping is applied
here, where data is read, so no caller can forget it.
"""
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from sqlmodel.sql.expression import Select

from ecrf.audit import service as audit
from ecrf.auth.actor import Actor
from ecrf.responses import dumps
from ecrf.store import bulk
from ecrf.store.errors import Conflict, Forbidden, Gone, NotFound, VersionConflict
from ecrf.store.indexing import Fact, Indexer, patient_of, search_tokens
from ecrf.store.models import ConditionalKey, ItemFact, ResourceHead, ResourceVersion, SearchToken


@dataclass(frozen=True)
class Stored:
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    patient_id: str | None
    site: str | None
    content: dict[str, Any]

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


@dataclass
class WriteContext:
    """Why and where from a write happens; recorded on the version and in the audit trail."""

    source: str  # "form", "fhir" or "system"
    reason: str | None = None
    form_id: str | None = None
    visit_id: str | None = None


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def _stored(row: ResourceVersion) -> Stored:
    return Stored(
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        version_id=row.version_id,
        last_updated=row.last_updated,
        deleted=row.deleted,
        patient_id=row.patient_id,
        site=row.site,
        content=orjson.loads(row.content),
    )


ONE_MICROSECOND = timedelta(microseconds=1)

DerivedHook = Callable[["ClinicalStore", set[str]], None]
FactKey = tuple[str, str]  # (form id, item id)


@dataclass
class ClinicalStore:
    session: Session
    actor: Actor
    indexer: Indexer
    derived_hooks: list[DerivedHook] = field(default_factory=list)
    touched_patients: set[str] = field(default_factory=set)

    # -- reads -------------------------------------------------------------------------------

    def head(self, resource_type: str, resource_id: str) -> ResourceHead | None:
        head = self.session.get(ResourceHead, (resource_type, resource_id))
        if head is not None and not self.actor.may_see_site(head.site):
            return None  # another site's data does not exist for this actor
        return head

    def read(self, resource_type: str, resource_id: str) -> Stored:
        head = self.head(resource_type, resource_id)
        if head is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        version = self.session.get(ResourceVersion, head.version_pk)
        if head.deleted:
            raise Gone(f"{resource_type}/{resource_id} was deleted in version {head.version_id}")
        return _stored(version)

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> Stored:
        if self.head(resource_type, resource_id) is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        row = self.session.exec(select(ResourceVersion).where(
            ResourceVersion.resource_type == resource_type,
            ResourceVersion.resource_id == resource_id,
            ResourceVersion.version_id == version_id,
        )).one_or_none()
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        if row.deleted:
            raise Gone(f"{resource_type}/{resource_id} version {version_id} is a deletion")
        return _stored(row)

    def history(self, resource_type: str, resource_id: str) -> list[Stored]:
        if self.head(resource_type, resource_id) is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        rows = self.session.exec(select(ResourceVersion).where(
            ResourceVersion.resource_type == resource_type,
            ResourceVersion.resource_id == resource_id,
        ).order_by(ResourceVersion.version_id.desc())).all()
        return [_stored(row) for row in rows]

    def scoped_heads(self, resource_type: str) -> Select:
        """Current, not deleted heads of one type that this actor may see: the base of every search."""
        statement = select(ResourceHead).where(ResourceHead.resource_type == resource_type,
                                               ResourceHead.deleted == False)  # noqa: E712
        if self.actor.sites is not None:
            statement = statement.where(ResourceHead.site.in_(sorted(self.actor.sites)))
        return statement

    def current(self, heads: Iterable[ResourceHead]) -> list[Stored]:
        """Current versions for heads already filtered by a scoped query, in the given order."""
        heads = list(heads)
        pks = [head.version_pk for head in heads]
        if not pks:
            return []
        rows = {row.pk: row for row in self.session.exec(select(ResourceVersion).where(ResourceVersion.pk.in_(pks))).all()}
        return [_stored(rows[pk]) for pk in pks]

    # -- writes ------------------------------------------------------------------------------

    def create(
        self, resource: dict[str, Any], context: WriteContext, *, resource_id: str | None = None, site: str | None = None,
    ) -> Stored:
        """A new resource. `site` places a Patient at a site; other resources take their Patient's site."""
        return self._write(resource["resourceType"], resource_id or new_id(), resource, context,
                           expected=None, must_be_new=True, site=site)

    def create_many(
        self, resources: list[tuple[dict[str, Any], str]], context: WriteContext, *, site: str | None = None,
    ) -> list[Stored]:
        """Many new resources (resource, id) in bulk inserts: the same versions, heads, tokens, facts and
        audit entries as create() one by one, without a round trip per resource."""
        if not resources:
            return []
        now = datetime.now(UTC)
        moment = instant(now)
        patient_sites = self._patient_sites(resources, site)
        versions, prepared = [], []
        for resource, resource_id in resources:
            resource_type = resource["resourceType"]
            content = {**resource, "id": resource_id,
                       "meta": {**(resource.get("meta") or {}), "versionId": "1", "lastUpdated": moment}}
            patient_id = patient_of(content)
            where = (site or self.actor.site) if resource_type == "Patient" else \
                patient_sites.get(patient_id, site or self.actor.site)
            if not self.actor.may_see_site(where):
                raise Forbidden(f"{resource_type}/{resource_id} belongs to a site this client may not write")
            prepared.append(Stored(resource_type, resource_id, 1, now, False, patient_id, where, content))
            versions.append({
                "resource_type": resource_type, "resource_id": resource_id, "version_id": 1, "last_updated": now,
                "deleted": False, "patient_id": patient_id, "site": where, "content": orjson.dumps(content).decode(),
                "author_sub": self.actor.sub, "author_role": self.actor.role, "reason": context.reason,
                "source": context.source,
            })
        pks = bulk.next_keys(self.session, ResourceVersion.__table__, len(versions))
        for version, pk in zip(versions, pks, strict=True):
            version["pk"] = pk
        try:
            bulk.insert_rows(self.session, ResourceVersion.__table__, versions)
            bulk.insert_rows(self.session, ResourceHead.__table__, [
                {"resource_type": s.resource_type, "resource_id": s.resource_id, "version_id": 1, "version_pk": pk,
                 "last_updated": now, "deleted": False, "patient_id": s.patient_id, "site": s.site}
                for s, pk in zip(prepared, pks, strict=True)
            ])
        except IntegrityError as error:
            raise Conflict("a resource of this request already exists or was created concurrently: retry") from error
        tokens, facts, audit_entries = [], [], []
        for stored in prepared:
            tokens.extend(
                {"resource_type": stored.resource_type, "resource_id": stored.resource_id, "param": token.param,
                 "system": _cut(token.system), "code": _cut(token.code), "value": _cut(token.value),
                 "moment": token.moment}
                for token in search_tokens(stored.content))
            new_facts = self.indexer.facts(stored.content)
            facts.extend(self._fact_row(stored, fact, context) for fact in new_facts)
            common = dict(action="create", source=context.source, patient_id=stored.patient_id,
                          visit_id=context.visit_id, reason=context.reason, resource=stored.reference,
                          resource_version=1)
            by_item = {(fact.form_id, fact.item_id): fact for fact in new_facts}
            shown = [(by_item[key], _shown(by_item[key])) for key in sorted(by_item)]
            shown = [(fact, text) for fact, text in shown if text is not None]
            audit_entries.extend({**common, "form_id": fact.form_id, "item_id": fact.item_id, "new_value": text}
                                 for fact, text in shown)
            if not shown:
                audit_entries.append({**common, "form_id": context.form_id})
            if stored.patient_id:
                self.touched_patients.add(stored.patient_id)
        bulk.insert_rows(self.session, SearchToken.__table__, tokens)
        bulk.insert_rows(self.session, ItemFact.__table__, facts)
        audit.append_many(self.session, self.actor, audit_entries)
        return prepared

    def _patient_sites(self, resources: list[tuple[dict[str, Any], str]], site: str | None) -> dict[str, str | None]:
        """Site of every Patient the resources are about: created alongside, or already stored."""
        sites = {rid: site or self.actor.site for resource, rid in resources if resource["resourceType"] == "Patient"}
        wanted = {patient_of(resource) for resource, _ in resources} - set(sites) - {None}
        if wanted:
            for head in self.session.exec(select(ResourceHead).where(
                    ResourceHead.resource_type == "Patient", ResourceHead.resource_id.in_(sorted(wanted)))).all():
                sites[head.resource_id] = head.site
        return sites

    def update(
        self, resource_type: str, resource_id: str, resource: dict[str, Any], context: WriteContext,
        *, if_match: int | None = None,
    ) -> tuple[Stored, bool]:
        """Update (or create with the client's id); returns the version and whether it was created."""
        existed = self.session.get(ResourceHead, (resource_type, resource_id)) is not None
        stored = self._write(resource_type, resource_id, resource, context, expected=if_match, must_be_new=False)
        return stored, not existed

    def delete(self, resource_type: str, resource_id: str, context: WriteContext, *, if_match: int | None = None) -> Stored | None:
        head = self._locked_head(resource_type, resource_id)
        if head is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if head.deleted:
            return None
        self._check_version(head, if_match, resource_type, resource_id)
        previous = self.session.get(ResourceVersion, head.version_pk)
        content = orjson.loads(previous.content)
        return self._append_version(head, resource_type, resource_id, content, context, deleted=True, site=None)

    def claim_conditional(self, resource_type: str, criteria: str, resource_id: str) -> None:
        """Reserve a conditional-create key; a concurrent twin fails on the unique key and retries."""
        self.session.add(ConditionalKey(resource_type=resource_type, criteria=criteria, resource_id=resource_id))
        self.session.flush()

    def release_conditional(self, resource_type: str, criteria: str) -> None:
        """Free a key whose resource was deleted, so the criteria can create again."""
        self.session.execute(sql_delete(ConditionalKey).where(
            (ConditionalKey.resource_type == resource_type) & (ConditionalKey.criteria == criteria)))

    def conditional_owner(self, resource_type: str, criteria: str) -> str | None:
        key = self.session.get(ConditionalKey, (resource_type, criteria))
        return key.resource_id if key else None

    def finish(self) -> None:
        """Recompute derived state for every patient this unit of work touched, before commit."""
        while self.touched_patients:
            patients, self.touched_patients = self.touched_patients, set()
            for hook in self.derived_hooks:
                hook(self, patients)

    # -- internals ---------------------------------------------------------------------------

    def _locked_head(self, resource_type: str, resource_id: str) -> ResourceHead | None:
        head = self.session.exec(select(ResourceHead).where(
            ResourceHead.resource_type == resource_type, ResourceHead.resource_id == resource_id,
        ).with_for_update()).one_or_none()
        if head is not None and not self.actor.may_see_site(head.site):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return head

    @staticmethod
    def _check_version(head: ResourceHead, expected: int | None, resource_type: str, resource_id: str) -> None:
        if expected is not None and head.version_id != expected:
            raise VersionConflict(
                f"{resource_type}/{resource_id} is at version {head.version_id}, not {expected}: read it again"
            )

    def _write(
        self, resource_type: str, resource_id: str, resource: dict[str, Any], context: WriteContext,
        *, expected: int | None, must_be_new: bool, site: str | None = None,
    ) -> Stored:
        head = self._locked_head(resource_type, resource_id)
        if head is not None and must_be_new:
            raise Conflict(f"{resource_type}/{resource_id} already exists")
        if head is None and expected is not None:
            raise VersionConflict(f"{resource_type}/{resource_id} does not exist, so version {expected} cannot match")
        if head is not None:
            self._check_version(head, expected, resource_type, resource_id)
        return self._append_version(head, resource_type, resource_id, dict(resource), context, deleted=False, site=site)

    def _site_for(self, resource_type: str, patient_id: str | None, requested: str | None) -> str | None:
        if patient_id and resource_type != "Patient":
            patient = self.session.get(ResourceHead, ("Patient", patient_id))
            if patient is not None:
                return patient.site
        return requested or self.actor.site

    def _append_version(
        self, head: ResourceHead | None, resource_type: str, resource_id: str, content: dict[str, Any],
        context: WriteContext, *, deleted: bool, site: str | None,
    ) -> Stored:
        now = datetime.now(UTC)
        if head is not None and now <= head.last_updated:
            now = head.last_updated + ONE_MICROSECOND  # versions of one resource never share an instant
        version_id = 1 if head is None else head.version_id + 1
        patient_id = patient_of({**content, "resourceType": resource_type, "id": resource_id})
        site = head.site if head is not None else self._site_for(resource_type, patient_id, site)
        if not self.actor.may_see_site(site):
            raise Forbidden(f"{resource_type}/{resource_id} belongs to a site this client may not write")
        content["resourceType"] = resource_type
        content["id"] = resource_id
        meta = dict(content.get("meta") or {})
        meta["versionId"] = str(version_id)
        meta["lastUpdated"] = instant(now)
        content["meta"] = meta
        row = ResourceVersion(
            resource_type=resource_type, resource_id=resource_id, version_id=version_id, last_updated=now,
            deleted=deleted, patient_id=patient_id, site=site, content=dumps(content).decode(),
            author_sub=self.actor.sub, author_role=self.actor.role, reason=context.reason, source=context.source,
        )
        self.session.add(row)
        try:
            self.session.flush()
        except IntegrityError as error:
            raise Conflict(f"{resource_type}/{resource_id} was written concurrently: retry") from error
        if head is None:
            head = ResourceHead(resource_type=resource_type, resource_id=resource_id, version_id=version_id,
                                version_pk=row.pk, last_updated=now, deleted=deleted, patient_id=patient_id, site=site)
        else:
            head.version_id, head.version_pk, head.last_updated = version_id, row.pk, now
            head.deleted, head.patient_id = deleted, patient_id
        self.session.add(head)
        try:
            self.session.flush()
        except IntegrityError as error:
            raise Conflict(f"{resource_type}/{resource_id} was created concurrently: retry") from error
        stored = _stored(row)
        old_facts, new_facts = self._reindex(stored, context)
        self._audit(stored, context, old_facts, new_facts)
        if patient_id:
            self.touched_patients.add(patient_id)
        return stored

    def _reindex(self, stored: Stored, context: WriteContext) -> tuple[dict[FactKey, ItemFact], dict[FactKey, Fact]]:
        """Replace the resource's tokens and facts; returns the facts it had before and has now."""
        key = (ItemFact.resource_type == stored.resource_type) & (ItemFact.resource_id == stored.resource_id)
        old = {(fact.form_id, fact.item_id): fact for fact in self.session.exec(select(ItemFact).where(key)).all()}
        self.session.execute(sql_delete(ItemFact).where(key))
        self.session.execute(sql_delete(SearchToken).where(
            (SearchToken.resource_type == stored.resource_type) & (SearchToken.resource_id == stored.resource_id)
        ))
        if stored.deleted:
            return old, {}
        tokens = [
            {"resource_type": stored.resource_type, "resource_id": stored.resource_id, "param": token.param,
             "system": _cut(token.system), "code": _cut(token.code), "value": _cut(token.value), "moment": token.moment}
            for token in search_tokens(stored.content)
        ]
        if tokens:
            self.session.execute(SearchToken.__table__.insert(), tokens)
        new = {(fact.form_id, fact.item_id): fact for fact in self.indexer.facts(stored.content)}
        facts = [self._fact_row(stored, fact, context, old.get(key)) for key, fact in new.items()]
        if facts:
            self.session.execute(ItemFact.__table__.insert(), facts)
        return old, new

    @staticmethod
    def _fact_row(stored: Stored, fact: Fact, context: WriteContext, before: ItemFact | None = None) -> dict[str, Any]:
        """The fact of the new version; a value this version did not change keeps the provenance (source and
        version) of the write that set it, so a derived status update does not claim a clinician's value."""
        if before is not None and _shown(before) == _shown(fact):
            source, set_in = before.source or context.source, before.set_in_version or before.version_id
        else:
            source, set_in = context.source, stored.version_id
        return {
            "resource_type": stored.resource_type, "resource_id": stored.resource_id,
            "version_id": stored.version_id, "patient_id": stored.patient_id, "form_id": fact.form_id,
            "item_id": fact.item_id, "value_number": fact.value_number, "value_text": fact.value_text,
            "unit": fact.unit, "original_value": _cut(fact.original_value, 64), "original_unit": _cut(fact.original_unit, 64),
            "uln": fact.uln, "effective": fact.effective, "error": fact.error, "source": source,
            "set_in_version": set_in,
        }

    def _audit(self, stored: Stored, context: WriteContext, old_facts: dict[FactKey, ItemFact],
               new_facts: dict[FactKey, Fact]) -> None:
        action = "delete" if stored.deleted else ("create" if stored.version_id == 1 else "update")
        common = dict(source=context.source, patient_id=stored.patient_id, visit_id=context.visit_id,
                      reason=context.reason, resource=stored.reference, resource_version=stored.version_id)
        changed = False
        for key in sorted(set(old_facts) | set(new_facts)):
            old_value = _shown(old_facts.get(key))
            new_value = _shown(new_facts.get(key))
            if old_value == new_value:
                continue
            changed = True
            audit.append(self.session, self.actor, action, form_id=key[0], item_id=key[1],
                         old_value=old_value, new_value=new_value, **common)
        if not changed:
            audit.append(self.session, self.actor, action, form_id=context.form_id, **common)


def _shown(fact: Any) -> str | None:
    if fact is None:
        return None
    text = fact.value_text if fact.value_text is not None else fact.original_value
    unit = f" {fact.unit}" if fact.unit else ""
    uln = f" (ULN {fact.uln:g})" if fact.uln is not None else ""
    return f"{text}{unit}{uln}"


def _cut(text: str | None, limit: int = 255) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit]

