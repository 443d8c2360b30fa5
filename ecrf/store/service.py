"""The versioned clinical store: every write is a new version, with who, when, why and where from.

Both doors (eCRF forms and FHIR REST) write and read through this class; site scoping is applied
here, where data is read, so no caller can forget it.
"""

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete as sql_delete
from sqlalchemy import and_, exists, func
from sqlalchemy import text as sa_text
from sqlalchemy.orm import aliased
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from sqlmodel.sql.expression import Select

from ecrf.audit import service as audit
from ecrf.auth.actor import Actor
from ecrf.responses import dumps
from ecrf.common import bulk
from ecrf.common.errors import Conflict, Forbidden, Gone, NotFound, OffCalendar, VersionConflict
from ecrf.store.indexing import Indexer, out_of_range, patient_of
from ecrf.store.models import ConditionalKey, ItemFact, PushedBy, ResourceHead, ResourceVersion, SearchToken
from ecrf.store.version_rows import FactKey, audit_entries, fact_rows, token_rows


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


def _check_calendar(content: dict[str, Any]) -> None:
    """Every door's writes: no date off the stored calendar (the FHIR door says so earlier, per entry)."""
    problems = out_of_range(content)
    if problems:
        path, problem = problems[0]
        raise OffCalendar(f"{content['resourceType']}.{path}: {problem}", location=f"{content['resourceType']}.{path}")


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
BULK_CHUNK = 1000  # resources per bulk insert: bounds the rows held in memory at once

DerivedHook = Callable[["ClinicalStore", set[str]], None]
# Asked before any version of an existing resource is written or deleted: refuses by raising a StoreError
# (nothing is written), or answers a follow-up to run in the same transaction once the new version is in place.
WriteGuard = Callable[["ClinicalStore", str, str, "WriteContext"], Callable[[], None] | None]
EHR_ONLY = frozenset({"ehr"})


@dataclass
class ClinicalStore:
    session: Session
    actor: Actor
    indexer: Indexer
    derived_hooks: list[DerivedHook] = field(default_factory=list)
    write_guards: list[WriteGuard] = field(default_factory=list)
    touched_patients: set[str] = field(default_factory=set)
    touched_resources: set[tuple[str, str]] = field(default_factory=set)  # (type, id) written: for derived hooks
    # An ehr-only client sees only what it pushed (pushed_by), and its writes are recorded there;
    # None: decided by the actor's roles.
    own_pushes_only: bool | None = None

    def __post_init__(self) -> None:
        if self.own_pushes_only is None:
            self.own_pushes_only = self.actor.roles == EHR_ONLY

    # -- visibility: the one rule of what this actor may see, for a query and for one loaded head --

    def visible(self, statement: Select) -> Select:
        """The statement (over resource_head) limited to what this actor may see: its sites, and for an
        ehr-only client only the resources it pushed."""
        if self.actor.sites is not None:
            statement = statement.where(ResourceHead.site.in_(sorted(self.actor.sites)))
        if self.own_pushes_only:
            statement = statement.where(
                exists().where(
                    PushedBy.resource_type == ResourceHead.resource_type,
                    PushedBy.resource_id == ResourceHead.resource_id,
                    PushedBy.sub == self.actor.sub,
                )
            )
        return statement

    def sees(self, head: ResourceHead) -> bool:
        """`visible` for one head already loaded."""
        if not self.actor.may_see_site(head.site):
            return False
        return (
            not self.own_pushes_only
            or self.session.get(PushedBy, (head.resource_type, head.resource_id, self.actor.sub)) is not None
        )

    def site_view(self) -> "ClinicalStore":
        """This unit of work seeing all of its actor's sites' data, also for an ehr client (which otherwise
        sees its pushes only): for derived state and duplicate checks. Its writes are not pushes."""
        return replace(self, own_pushes_only=False) if self.own_pushes_only else self

    def adopt(self, resource_type: str, resource_id: str) -> None:
        """An ehr client linked an existing resource to itself (its site's Patient, by MRN): from now on it
        counts as pushed by that client."""
        if self.own_pushes_only:
            self._record_push(resource_type, resource_id, new=False)
            self.session.flush()

    # -- reads -------------------------------------------------------------------------------

    def head(self, resource_type: str, resource_id: str) -> ResourceHead | None:
        head = self.session.get(ResourceHead, (resource_type, resource_id))
        if head is not None and not self.sees(head):
            return None  # data this actor may not see (another site's, another client's) do not exist for it
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
        row = self.session.exec(
            select(ResourceVersion).where(
                ResourceVersion.resource_type == resource_type,
                ResourceVersion.resource_id == resource_id,
                ResourceVersion.version_id == version_id,
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {version_id}")
        if row.deleted:
            raise Gone(f"{resource_type}/{resource_id} version {version_id} is a deletion")
        return _stored(row)

    def history(self, resource_type: str, resource_id: str) -> list[Stored]:
        if self.head(resource_type, resource_id) is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        rows = self.session.exec(
            select(ResourceVersion)
            .where(
                ResourceVersion.resource_type == resource_type,
                ResourceVersion.resource_id == resource_id,
            )
            .order_by(ResourceVersion.version_id.desc())
        ).all()
        return [_stored(row) for row in rows]

    def history_page(
        self,
        resource_types: Iterable[str],
        resource_id: str | None = None,
        *,
        since: datetime | None = None,
        at: tuple[datetime, datetime] | None = None,
        count: int,
        offset: int = 0,
    ) -> tuple[list[Stored], int]:
        """One page of versions (newest first) of the given types, or of one resource, that this actor may see,
        and how many there are. `since`: versions written at or after it; `at` ([start, end)): the versions that
        were current at some moment of that period."""
        if resource_id is not None:
            [resource_type] = resource_types
            if self.head(resource_type, resource_id) is None:
                raise NotFound(f"{resource_type}/{resource_id} is not known")
        statement = self.visible(
            select(ResourceVersion)
            .join(
                ResourceHead,
                and_(
                    ResourceHead.resource_type == ResourceVersion.resource_type,
                    ResourceHead.resource_id == ResourceVersion.resource_id,
                ),
            )
            .where(ResourceVersion.resource_type.in_(sorted(resource_types)))
        )
        if resource_id is not None:
            statement = statement.where(ResourceVersion.resource_id == resource_id)
        if since is not None:
            statement = statement.where(ResourceVersion.last_updated >= since)
        if at is not None:
            start, end = at
            later = aliased(ResourceVersion)
            statement = statement.where(
                ResourceVersion.last_updated < end,
                ~exists().where(
                    later.resource_type == ResourceVersion.resource_type,
                    later.resource_id == ResourceVersion.resource_id,
                    later.version_id > ResourceVersion.version_id,
                    later.last_updated <= start,
                ),
            )
        total = self.session.exec(select(func.count()).select_from(statement.subquery())).one()
        if count == 0:
            return [], total
        rows = self.session.exec(
            statement.order_by(ResourceVersion.last_updated.desc(), ResourceVersion.pk.desc())
            .offset(offset)
            .limit(count)
        ).all()
        return [_stored(row) for row in rows], total

    def scoped_heads(self, resource_type: str) -> Select:
        """Current, not deleted heads of one type that this actor may see: the base of every search."""
        return self.visible(
            select(ResourceHead).where(ResourceHead.resource_type == resource_type, ResourceHead.deleted == False)  # noqa: E712
        )

    def current(self, heads: Iterable[ResourceHead]) -> list[Stored]:
        """Current versions of heads, in the given order; those this actor may not see are left out."""
        heads = list(heads)
        pks = [head.version_pk for head in heads]
        if not pks:
            return []
        statement = self.visible(
            select(ResourceVersion)
            .join(
                ResourceHead,
                and_(
                    ResourceHead.resource_type == ResourceVersion.resource_type,
                    ResourceHead.resource_id == ResourceVersion.resource_id,
                ),
            )
            .where(ResourceVersion.pk.in_(pks))
        )
        rows = {row.pk: row for row in self.session.exec(statement).all()}
        return [_stored(rows[pk]) for pk in pks if pk in rows]

    # -- writes ------------------------------------------------------------------------------

    def create(
        self,
        resource: dict[str, Any],
        context: WriteContext,
        *,
        resource_id: str | None = None,
        site: str | None = None,
    ) -> Stored:
        """A new resource. `site` places a Patient at a site; other resources take their Patient's site."""
        return self._write(
            resource["resourceType"],
            resource_id or new_id(),
            resource,
            context,
            expected=None,
            must_be_new=True,
            site=site,
        )

    def create_many(
        self,
        resources: list[tuple[dict[str, Any], str]],
        context: WriteContext,
        *,
        site: str | None = None,
    ) -> list[Stored]:
        """Many new resources (resource, id) in bulk inserts: the same versions, heads, tokens, facts and
        audit entries as create() one by one, without a round trip per resource."""
        if not resources:
            return []
        now = datetime.now(UTC)
        moment = instant(now)
        patient_sites = self._patient_sites(resources, site)
        prepared = []
        for resource, resource_id in resources:
            resource_type = resource["resourceType"]
            content = {
                **resource,
                "id": resource_id,
                "meta": {**(resource.get("meta") or {}), "versionId": "1", "lastUpdated": moment},
            }
            patient_id = patient_of(content)
            where = (
                (site or self.actor.site)
                if resource_type == "Patient"
                else patient_sites.get(patient_id, site or self.actor.site)
            )
            if not self.actor.may_see_site(where):
                raise Forbidden(f"{resource_type}/{resource_id} belongs to a site this client may not write")
            _check_calendar(content)
            prepared.append(Stored(resource_type, resource_id, 1, now, False, patient_id, where, content))
        for start in range(0, len(prepared), BULK_CHUNK):  # rows are built and inserted a chunk at a time
            self._insert_new(prepared[start : start + BULK_CHUNK], context)
        return prepared

    def _insert_new(self, prepared: list[Stored], context: WriteContext) -> None:
        versions = [
            {
                "resource_type": s.resource_type,
                "resource_id": s.resource_id,
                "version_id": 1,
                "last_updated": s.last_updated,
                "deleted": False,
                "patient_id": s.patient_id,
                "site": s.site,
                "content": dumps(s.content).decode(),
                "author_sub": self.actor.sub,
                "author_role": self.actor.role,
                "reason": context.reason,
                "source": context.source,
            }
            for s in prepared
        ]
        pks = bulk.next_keys(self.session, ResourceVersion.__table__, len(versions))
        for version, pk in zip(versions, pks, strict=True):
            version["pk"] = pk
        try:
            bulk.insert_rows(self.session, ResourceVersion.__table__, versions)
            bulk.insert_rows(
                self.session,
                ResourceHead.__table__,
                [
                    {
                        "resource_type": s.resource_type,
                        "resource_id": s.resource_id,
                        "version_id": 1,
                        "version_pk": pk,
                        "last_updated": s.last_updated,
                        "deleted": False,
                        "patient_id": s.patient_id,
                        "site": s.site,
                    }
                    for s, pk in zip(prepared, pks, strict=True)
                ],
            )
            if self.own_pushes_only:
                bulk.insert_rows(
                    self.session,
                    PushedBy.__table__,
                    [
                        {"resource_type": s.resource_type, "resource_id": s.resource_id, "sub": self.actor.sub}
                        for s in prepared
                    ],
                )
        except IntegrityError as error:
            raise Conflict("a resource of this request already exists or was created concurrently: retry") from error
        self._index([(stored, {}) for stored in prepared], context)

    def _patient_sites(self, resources: list[tuple[dict[str, Any], str]], site: str | None) -> dict[str, str | None]:
        """Site of every Patient the resources are about: created alongside, or already stored."""
        sites = {rid: site or self.actor.site for resource, rid in resources if resource["resourceType"] == "Patient"}
        wanted = {patient_of(resource) for resource, _ in resources} - set(sites) - {None}
        if wanted:
            for head in self.session.exec(
                select(ResourceHead).where(
                    ResourceHead.resource_type == "Patient", ResourceHead.resource_id.in_(sorted(wanted))
                )
            ).all():
                sites[head.resource_id] = head.site
        return sites

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        context: WriteContext,
        *,
        if_match: int | None = None,
    ) -> tuple[Stored, bool]:
        """Update (or create with the client's id); returns the version and whether it was created."""
        head = self.session.get(ResourceHead, (resource_type, resource_id))
        existed = head is not None and not head.deleted  # re-creating a deleted resource is a create (201)
        stored = self._write(resource_type, resource_id, resource, context, expected=if_match, must_be_new=False)
        return stored, not existed

    def delete(
        self, resource_type: str, resource_id: str, context: WriteContext, *, if_match: int | None = None
    ) -> Stored | None:
        head = self._locked_head(resource_type, resource_id)
        if head is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if head.deleted:
            return None
        self._check_version(head, if_match, resource_type, resource_id)
        follow_ups = self._guarded(resource_type, resource_id, context)
        previous = self.session.get(ResourceVersion, head.version_pk)
        content = orjson.loads(previous.content)
        stored = self._append_version(head, resource_type, resource_id, content, context, deleted=True, site=None)
        for follow_up in follow_ups:
            follow_up()
        return stored

    def write_owned(
        self,
        resources: Iterable[tuple[str, dict[str, Any]]],
        previous: dict[str, str],
        new_id: Callable[[str], str],
        patches: Iterable[tuple[str, str, dict[str, Any]]],
        context: WriteContext,
    ) -> dict[str, str]:
        """Write what one owner (a form instance) holds, a resource a slot, in one call; returns {slot: "Type/id"}.

        A slot's resource keeps the id it already has (`previous`: an entry that landed from an EHR keeps the
        EHR's resource, so an edit through the form is a new version of it), else takes `new_id(slot)`. A
        resource that reads back unchanged gets no new version (no audit noise); identifiers the mapping does
        not set (an EHR's) stay on the new version. A slot no longer filled, or filled by a resource of another type, has its old resource deleted. Each
        patch (type, id, partial content) is merged into that existing resource, written only if it changes it.
        """

        def slot_id(slot: str, resource_type: str) -> str:
            reference = previous.get(slot)
            if reference and reference.split("/", 1)[0] == resource_type:
                return reference.split("/", 1)[1]
            return new_id(slot)

        wanted = {slot_id(slot, resource["resourceType"]): (slot, resource) for slot, resource in resources}
        heads = self.session.exec(select(ResourceHead).where(ResourceHead.resource_id.in_(list(wanted)))).all()
        current = {
            stored.resource_id: stored.content
            for stored in self.current(h for h in heads if not h.deleted and self.actor.may_see_site(h.site))
        }
        owned: dict[str, str] = {}
        for resource_id, (slot, resource) in wanted.items():
            resource_type = resource["resourceType"]
            owned[slot] = f"{resource_type}/{resource_id}"
            if "identifier" in current.get(resource_id, {}) and "identifier" not in resource:
                resource = {**resource, "identifier": current[resource_id]["identifier"]}
            if resource_id in current and _same(current[resource_id], resource):
                continue
            self.update(resource_type, resource_id, resource, context)
        for slot, reference in previous.items():
            if owned.get(slot) != reference:  # gone, or of another type now (exposure: the drug changed)
                resource_type, resource_id = reference.split("/", 1)
                self.delete(resource_type, resource_id, context)
        for resource_type, resource_id, patch in patches:
            if not patch:
                continue
            existing = self.read(resource_type, resource_id).content
            merged = _merge(existing, patch)
            if not _same(existing, merged):
                self.update(resource_type, resource_id, merged, context)
        return owned

    def serialise(self, text: str) -> None:
        """Wait for, then hold to the end of this transaction, a lock named by `text` (PostgreSQL advisory lock;
        SQLite writers already take turns). Statements after it see what a holder before it committed."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        lock = int.from_bytes(hashlib.sha256(b"ecrf-serialise\x00" + text.encode()).digest()[:8], "big", signed=True)
        self.session.execute(sa_text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})

    def claim_conditional(self, resource_type: str, criteria: str, resource_id: str) -> None:
        """Reserve a conditional-create key; a concurrent twin fails on the unique key and retries."""
        self.session.add(ConditionalKey(resource_type=resource_type, criteria=criteria, resource_id=resource_id))
        self.session.flush()

    def release_conditional(self, resource_type: str, criteria: str, owner: str) -> None:
        """Free the key `owner` holds because its resource was deleted, so the criteria can create again. Only
        while `owner` still holds it: a key a concurrent unit of work has released and claimed again stays."""
        self.session.execute(
            sql_delete(ConditionalKey).where(
                (ConditionalKey.resource_type == resource_type)
                & (ConditionalKey.criteria == criteria)
                & (ConditionalKey.resource_id == owner)
            )
        )

    def conditional_owner(self, resource_type: str, criteria: str) -> str | None:
        key = self.session.get(ConditionalKey, (resource_type, criteria))
        return key.resource_id if key else None

    def finish(self) -> None:
        """Recompute derived state for every patient this unit of work touched, before commit."""
        while self.touched_patients:
            patients, self.touched_patients = self.touched_patients, set()
            view = self.site_view()  # derived state (eligibility) sees all of a subject's data
            for hook in self.derived_hooks:
                hook(view, patients)

    # -- internals ---------------------------------------------------------------------------

    def _locked_head(self, resource_type: str, resource_id: str) -> ResourceHead | None:
        head = self.session.exec(
            select(ResourceHead)
            .where(
                ResourceHead.resource_type == resource_type,
                ResourceHead.resource_id == resource_id,
            )
            .with_for_update()
        ).one_or_none()
        if head is not None and not self.sees(head):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return head

    @staticmethod
    def _check_version(head: ResourceHead, expected: int | None, resource_type: str, resource_id: str) -> None:
        if expected is not None and head.version_id != expected:
            raise VersionConflict(
                f"{resource_type}/{resource_id} is at version {head.version_id}, not {expected}: read it again"
            )

    def _write(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        context: WriteContext,
        *,
        expected: int | None,
        must_be_new: bool,
        site: str | None = None,
    ) -> Stored:
        head = self._locked_head(resource_type, resource_id)
        if head is not None and must_be_new:
            raise Conflict(f"{resource_type}/{resource_id} already exists")
        if head is None and expected is not None:
            raise VersionConflict(f"{resource_type}/{resource_id} does not exist, so version {expected} cannot match")
        follow_ups = []
        if head is not None:
            self._check_version(head, expected, resource_type, resource_id)
            follow_ups = self._guarded(resource_type, resource_id, context)
        stored = self._append_version(
            head, resource_type, resource_id, dict(resource), context, deleted=False, site=site
        )
        for follow_up in follow_ups:
            follow_up()
        return stored

    def _record_push(self, resource_type: str, resource_id: str, *, new: bool) -> None:
        if new or self.session.get(PushedBy, (resource_type, resource_id, self.actor.sub)) is None:
            self.session.add(PushedBy(resource_type=resource_type, resource_id=resource_id, sub=self.actor.sub))

    def _guarded(self, resource_type: str, resource_id: str, context: WriteContext) -> list[Callable[[], None]]:
        answers = (guard(self, resource_type, resource_id, context) for guard in self.write_guards)
        return [follow_up for follow_up in answers if follow_up is not None]

    def _site_for(self, resource_type: str, patient_id: str | None, requested: str | None) -> str | None:
        if patient_id and resource_type != "Patient":
            patient = self.session.get(ResourceHead, ("Patient", patient_id))
            if patient is not None:
                return patient.site
        return requested or self.actor.site

    def _append_version(
        self,
        head: ResourceHead | None,
        resource_type: str,
        resource_id: str,
        content: dict[str, Any],
        context: WriteContext,
        *,
        deleted: bool,
        site: str | None,
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
        if not deleted:
            _check_calendar(content)
        row = ResourceVersion(
            resource_type=resource_type,
            resource_id=resource_id,
            version_id=version_id,
            last_updated=now,
            deleted=deleted,
            patient_id=patient_id,
            site=site,
            content=dumps(content).decode(),
            author_sub=self.actor.sub,
            author_role=self.actor.role,
            reason=context.reason,
            source=context.source,
        )
        self.session.add(row)
        if self.own_pushes_only:
            self._record_push(resource_type, resource_id, new=version_id == 1)
        try:
            self.session.flush()
        except IntegrityError as error:
            raise Conflict(f"{resource_type}/{resource_id} was written concurrently: retry") from error
        if head is None:
            head = ResourceHead(
                resource_type=resource_type,
                resource_id=resource_id,
                version_id=version_id,
                version_pk=row.pk,
                last_updated=now,
                deleted=deleted,
                patient_id=patient_id,
                site=site,
            )
        else:
            head.version_id, head.version_pk, head.last_updated = version_id, row.pk, now
            head.deleted, head.patient_id = deleted, patient_id
        self.session.add(head)
        try:
            self.session.flush()
        except IntegrityError as error:
            raise Conflict(f"{resource_type}/{resource_id} was created concurrently: retry") from error
        stored = _stored(row)
        self._index([(stored, self._unindex(stored))], context)
        return stored

    def _unindex(self, stored: Stored) -> dict[FactKey, Any]:
        """Drop the resource's search tokens and item facts; returns the facts it had."""
        facts, tokens = ItemFact.__table__, SearchToken.__table__
        old = self.session.execute(
            facts.delete()
            .where((facts.c.resource_type == stored.resource_type) & (facts.c.resource_id == stored.resource_id))
            .returning(*facts.c)
        ).all()
        self.session.execute(
            tokens.delete().where(
                (tokens.c.resource_type == stored.resource_type) & (tokens.c.resource_id == stored.resource_id)
            )
        )
        return {(fact.form_id, fact.item_id): fact for fact in old}

    def _index(self, versions: list[tuple[Stored, dict[FactKey, Any]]], context: WriteContext) -> None:
        """Search tokens, item facts and item-level audit entries of new versions, given the facts each
        resource had before; their patients' derived state is recomputed before commit."""
        tokens, facts, entries = [], [], []
        for stored, before in versions:
            after = {}
            if not stored.deleted:
                tokens += token_rows(stored)
                after = {(fact.form_id, fact.item_id): fact for fact in self.indexer.facts(stored.content)}
            facts += fact_rows(stored, after, context, before)
            entries += audit_entries(stored, context, before, after)
            if stored.patient_id:
                self.touched_patients.add(stored.patient_id)
                self.touched_resources.add((stored.resource_type, stored.resource_id))
        bulk.insert_rows(self.session, SearchToken.__table__, tokens)
        bulk.insert_rows(self.session, ItemFact.__table__, facts)
        audit.append_many(self.session, self.actor, entries)


def _same(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` (which may hold a mapping's exact Decimals and dates) is stored as `existing` reads back."""
    strip = {"meta", "id", "resourceType"}
    new = orjson.loads(dumps(new))
    return {k: v for k, v in existing.items() if k not in strip} == {k: v for k, v in new.items() if k not in strip}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged
