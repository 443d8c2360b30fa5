"""Requests (a Bundle entry or a REST call) and how one unit of work carries them out, in FHIR order.

A transaction runs every entry through one Engine in one store unit of work; a batch runs each entry
through the same Engine in its own savepoint; a REST call is a transaction of one entry.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from ecrf.auth.policy import can
from ecrf.errors import fhir_error_of
from ecrf.common.outcome import FhirError, issue
from ecrf.fhir import authorise, conditional
from ecrf.search import engine as search
from ecrf.fhir import retention as held
from ecrf.fhir.references import local_target, path_to, reference_holders
from ecrf.fhir.research_study import research_study
from ecrf.search.types import WRITABLE_TYPES
from ecrf.common.errors import NotFound, StoreError
from ecrf.store.service import ClinicalStore, Stored, WriteContext, new_id
from ecrf.subjects.service import claim_subject, study_reference, subject_key

METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}  # FHIR's order of processing a Bundle's entries
# New resources of a streamed Bundle written at a time: bounds the resources and rows held in memory. A Bundle
# parsed whole is written in one go (the store still inserts 1,000 at a time): on PostgreSQL every round of
# COPYs costs several milliseconds whatever its size.
STREAMED_CHUNK = 500
REASONS = {200: "OK", 201: "Created", 204: "No Content"}


@dataclass(slots=True)  # a Bundle may hold 10,000 of them
class Entry:
    index: int
    method: str
    resource_type: str
    location: str  # FHIRPath of the request ("Bundle.entry[3]"), or the resource type for REST calls
    resource_location: str
    resource_id: str | None = None
    version_id: int | None = None  # GET .../_history/{vid}
    criteria: str | None = None  # query of a conditional PUT/DELETE or of a GET search
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: int | None = None
    target_id: str | None = None
    matched: bool = False  # a conditional create found its resource
    merge: bool = False  # ... through the site's MRN of a pushed Patient: the match is updated with what was sent
    reload: Callable[[], dict[str, Any]] | None = None  # a streamed entry's resource, read again from the body
    may_search: bool = True  # False when the entry holds no "?" at all, so no conditional reference
    holders: list[dict[str, Any]] | None = None  # its references, once found (while its resource is held)
    retained: bool = True  # False: a valid resource of a type the study does not keep (ecrf/fhir/retention.py)
    removed: dict[str, Any] | None = None  # path -> held.Removal: references to what is not retained
    claim: str | None = None  # criteria whose conditional key this entry takes once written (at its site)

    def content(self) -> dict[str, Any] | None:
        """The resource, read again if it was let go."""
        if self.resource is None and self.reload is not None:
            self.resource = self.reload()
        return self.resource

    def references(self) -> list[dict[str, Any]]:
        """Every Reference in the resource, found once while the resource is held."""
        if self.holders is None:
            self.holders = list(reference_holders(self.content()))
        return self.holders

    def release(self) -> None:
        """Let the resource go, if it can be read again (rewritten references are lost with it)."""
        if self.reload is not None:
            self.resource, self.holders = None, None


def in_fhir_order(entries: Iterable[Entry]) -> list[Entry]:
    """Entries in the order FHIR processes a Bundle: DELETE, POST, PUT, GET, each method in Bundle order."""
    return sorted(entries, key=lambda e: (METHOD_ORDER[e.method], e.index))


@dataclass(slots=True)
class Result:
    status: int
    stored: Stored | None = None
    resource: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None

    @property
    def status_line(self) -> str:
        return f"{self.status} {REASONS.get(self.status, '')}".strip()


@dataclass
class Engine:
    store: ClinicalStore
    base_url: str
    study: Any
    context: WriteContext
    page_size: tuple[int, int] = (50, 500)
    mapping: dict[str, str] = field(default_factory=dict)  # fullUrl or conditional reference -> Type/id
    written: set[str] = field(default_factory=set)  # Type/id written by this unit of work
    _undo: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    _exists: dict[str, bool] = field(default_factory=dict)
    _claimed: dict[tuple[str, str], int] = field(default_factory=dict)
    retention: held.Retention = field(default_factory=held.Retention)
    bundle_urls: dict[str, int] = field(default_factory=dict)  # a batch's fullUrls -> entry index
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # a batch's refused fullUrls -> index, why

    def run(self, entries: list[Entry]) -> dict[int, Result]:
        """Carry out entries in FHIR order (DELETE, POST, PUT, GET); raises FhirError at the first failure.
        Nothing runs unless the policy allows every entry (role and SMART scopes): 403 naming each refusal.
        Entries of types the study does not keep are held back (nothing stored; ecrf/fhir/retention.py)."""
        held_back = [entry for entry in entries if not entry.retained]
        if held_back:
            self.retention.hold_back(held_back)
            entries = [entry for entry in entries if entry.retained]
        results = self._run(entries)
        kept = [(entry, results[entry.index].stored) for entry in entries if entry.removed]
        for entry, _ in kept:
            results[entry.index].outcome = held.kept_outcome(entry)
        results.update(self.held_back_results(held_back, entries))
        held.record(self.store.session, self.store.actor, held_back, kept)
        return results

    def held_back_results(self, held_back: list[Entry], entries: list[Entry]) -> dict[int, Result]:
        """The answers of held-back entries, listing the removed references to each among `entries`."""
        referring = held.referring(entries)
        return {
            entry.index: Result(200, outcome=held.held_back_outcome(entry, referring.get(entry.index, [])))
            for entry in held_back
        }

    def _run(self, entries: list[Entry]) -> dict[int, Result]:
        refused = []
        for entry in entries:
            refused += authorise.refusals(self.store.actor, entry, self._searches_first)
            entry.release()
        if refused:
            raise FhirError(403, refused)
        ordered = in_fhir_order(entries)
        results: dict[int, Result] = {}
        for entry in (e for e in ordered if e.method == "DELETE"):
            results[entry.index] = self._guard(entry, self._delete)
        writes = [e for e in ordered if e.method in ("POST", "PUT")]
        for entry in writes:
            self._guard(entry, self._resolve_target)
        subjects: dict[str, int] = {}  # subject key -> entry index, within this unit of work
        for entry in writes:
            self._guard(entry, lambda e: self._one_subject_per_patient(e, subjects))
        for entry in writes:  # before anything is written, as the server was when the request came
            self._guard(entry, self._resolve_conditional_references)
        creates = [e for e in writes if e.method == "POST" and not e.matched]
        step = STREAMED_CHUNK if any(entry.reload for entry in creates) else max(1, len(creates))
        for start in range(0, len(creates), step):
            results.update(self._create(creates[start : start + step], len(creates)))
        for entry in writes:
            if entry.method == "POST" and entry.matched and entry.merge:
                self._guard(entry, self._rewrite_references)
                results[entry.index] = self._guard(entry, self._merge)
            elif entry.method == "POST" and entry.matched:
                results[entry.index] = Result(200, self.store.read(entry.resource_type, entry.target_id))
            elif entry.method == "PUT":
                self._guard(entry, self._rewrite_references)
                results[entry.index] = self._guard(entry, self._update)
            entry.release()
        for entry in (e for e in ordered if e.method == "GET"):
            results[entry.index] = self._guard(entry, self._get)
        return results

    def undo_rewrites(self) -> None:
        """Put rewritten references back, so a retried unit of work starts from the request as sent."""
        for holder, original in reversed(self._undo):
            holder["reference"] = original
        self._undo.clear()

    def checkpoint(self) -> tuple[dict[str, str], set[str], dict[tuple[str, str], int]]:
        """What running one entry may change of this unit of work (references resolved, resources written,
        conditional keys claimed), to put back with `restore` when the entry fails (a batch's entries)."""
        return dict(self.mapping), set(self.written), dict(self._claimed)

    def restore(self, checkpoint: tuple[dict[str, str], set[str], dict[tuple[str, str], int]]) -> None:
        """Back to `checkpoint`: rewritten references put back, the entry's mappings, writes and claims gone."""
        self.undo_rewrites()
        self.mapping, self.written, self._claimed = checkpoint

    def forget_rewrites(self) -> None:
        """Keep the references rewritten so far as they are (the entry is done, whichever way it ended)."""
        self._undo.clear()

    # -- steps -----------------------------------------------------------------------------------

    def _create(self, chunk: list[Entry], creates: int) -> dict[int, Result]:
        """New resources in bulk. A streamed entry's result keeps no content (its response shows none)."""
        for entry in chunk:
            self._guard(entry, self._rewrite_references)
            self._patient_site(entry)
        try:
            created = self.store.create_many([(e.content(), e.target_id) for e in chunk], self.context)
        except StoreError as error:
            raise fhir_error_of(error, location="Bundle.entry" if creates > 1 else chunk[0].location) from error
        results = {}
        for entry, stored in zip(chunk, created, strict=True):
            self._claim_key(entry, stored)
            results[entry.index] = Result(201, stored if entry.reload is None else replace(stored, content={}))
            entry.release()
        return results

    def _guard(self, entry: Entry, step):
        try:
            return step(entry)
        except StoreError as error:
            raise fhir_error_of(error, location=entry.location) from error

    def _delete(self, entry: Entry) -> Result:
        resource_id = entry.resource_id
        if entry.criteria is not None:
            resource_id = conditional.find(self.store, entry.resource_type, entry.criteria, location=entry.location)
            if resource_id is None:
                return Result(204)
        try:
            stored = self.store.delete(entry.resource_type, resource_id, self.context, if_match=entry.if_match)
        except NotFound:
            return Result(204)  # R4: deleting what does not exist succeeds (an idempotent retry); nothing is written
        return Result(204, stored)

    def _resolve_target(self, entry: Entry) -> None:
        entry.merge, entry.claim = False, None
        if entry.method == "POST":
            criteria = entry.if_none_exist or self._site_mrn_criteria(entry)
            if criteria:
                # the implicit MRN match finds the site's Patient whoever pushed or enrolled it, and links it
                # to this client: for an ehr client it counts as pushed by it from now on
                linking = entry.if_none_exist is None
                found = conditional.find(
                    self.store.site_view() if linking else self.store,
                    entry.resource_type,
                    criteria,
                    location=entry.location,
                    creating=True,
                )
                if found is not None:
                    entry.target_id, entry.matched = found, True
                    entry.merge = linking  # the implicit MRN match is a conditional update
                    if linking:
                        self.store.adopt(entry.resource_type, found)
                else:
                    entry.target_id = new_id()
                    self._claim(entry, criteria)
            else:
                entry.target_id = new_id()
        elif entry.criteria is not None:
            found = conditional.find(
                self.store, entry.resource_type, entry.criteria, location=entry.location, creating=True
            )
            if found is None:
                found = entry.target_id = new_id()
                self._claim(entry, entry.criteria)
            entry.target_id = found
        else:
            entry.target_id = entry.resource_id
        reference = f"{entry.resource_type}/{entry.target_id}"
        if entry.full_url:
            self.mapping[entry.full_url] = reference
        if not entry.matched:
            self.written.add(reference)

    def _searches_first(self, entry: Entry) -> bool:
        """A create that looks for its resource first: ifNoneExist, or a Patient with its site's MRN."""
        return bool(entry.if_none_exist or self._site_mrn_criteria(entry))

    def _site_mrn_criteria(self, entry: Entry) -> str | None:
        """A Patient carrying an MRN of the pushing client's site is that site's patient with that MRN."""
        site = self.store.actor.site
        if entry.resource_type != "Patient" or site is None:
            return None
        try:
            system = self.study.site(site).mrn_system
        except KeyError:
            return None
        for identifier in entry.content().get("identifier") or []:
            if isinstance(identifier, dict) and identifier.get("system") == system and identifier.get("value"):
                return urlencode({"identifier": f"{system}|{identifier['value']}"})
        return None

    def _claim(self, entry: Entry, criteria: str) -> None:
        key = (entry.resource_type, conditional.normalised(criteria))
        twin = self._claimed.setdefault(key, entry.index)
        if twin != entry.index:
            raise FhirError.one(
                400,
                f"entries {twin} and {entry.index} both create {entry.resource_type}?{criteria}: send it once",
                code="duplicate",
                location=entry.location,
            )
        entry.claim = criteria  # taken once written, keyed by the site the resource lands at (_claim_key)

    def _one_subject_per_patient(self, entry: Entry, claimed: dict[str, int]) -> None:
        """A Patient is a subject of the study once (a unique key in conditional_key): creating another
        answers the subject that exists, as an ifNoneExist would; a PUT making a second one is refused."""
        if entry.resource_type != "ResearchSubject" or entry.matched or entry.content() is None:
            return
        patient_id = self._subject_patient(entry)
        if patient_id is None:
            return
        twin = claimed.setdefault(subject_key(self.study, patient_id), entry.index)
        if twin != entry.index:
            raise FhirError.one(
                400,
                f"entries {twin} and {entry.index} both make Patient/{patient_id} a subject of "
                f"{self.study.id}: send it once",
                code="duplicate",
                location=entry.location,
            )
        other = claim_subject(self.store, self.study, patient_id, entry.target_id)
        if other is None:
            return
        if self.store.head("ResearchSubject", other) is None:  # an ehr client's view: enrolled by someone else
            raise FhirError.one(
                409,
                f"Patient/{patient_id} already is a subject of study {self.study.id}, which "
                "this client did not push: it is not shown to it, and not made a second time",
                code="duplicate",
                location=f"{entry.resource_location}.individual",
            )
        if entry.method != "POST":
            raise FhirError.one(
                409,
                f"Patient/{patient_id} already is subject ResearchSubject/{other} of study "
                f"{self.study.id}, and a patient is enrolled once: update ResearchSubject/{other}",
                code="duplicate",
                location=f"{entry.resource_location}.individual",
            )
        self.written.discard(f"ResearchSubject/{entry.target_id}")
        entry.target_id, entry.matched = other, True
        if entry.full_url:
            self.mapping[entry.full_url] = f"ResearchSubject/{other}"

    def _subject_patient(self, entry: Entry) -> str | None:
        """The Patient id a ResearchSubject of this study names as individual (after this Bundle's fullUrls)."""
        study = (entry.resource.get("study") or {}).get("reference")
        reference = (entry.resource.get("individual") or {}).get("reference")
        if not isinstance(study, str) or not isinstance(reference, str):
            return None
        if local_target(study, self.base_url) != study_reference(self.study):
            return None
        reference = self.mapping.get(reference, reference)
        if "?" in reference and not reference.startswith(("http:", "https:")):
            reference = (
                self._conditional_reference(reference, lambda: f"{entry.resource_location}.individual.reference")
                or reference
            )
        target = local_target(reference, self.base_url)
        return target.split("/", 1)[1] if target and target.startswith("Patient/") else None

    def _resolve_conditional_references(self, entry: Entry) -> None:
        """Conditional references (Type?criteria) found among what was stored before this unit of work."""
        if (entry.matched and not entry.merge) or not entry.may_search or entry.content() is None:
            return
        for holder in entry.references():
            reference = holder["reference"]
            if "?" in reference and reference not in self.mapping and not reference.startswith(("http:", "https:")):
                target = self._conditional_reference(reference, lambda: self._path(entry, holder))
                if target is not None:
                    self.mapping[reference] = target
        entry.release()

    def _rewrite_references(self, entry: Entry) -> None:
        if (entry.matched and not entry.merge) or entry.content() is None:
            return
        problems = []
        removed = False
        for holder in entry.references():
            original = holder["reference"]
            if self._remove_if_not_retained(entry, holder, original):
                removed = True
                continue
            target = self.mapping.get(original)
            if target is None and original.startswith(self.base_url + "/") and "?" not in original:
                target = original[len(self.base_url) + 1 :]  # this server's own URL: kept relative, linked as such
            if target is not None:
                if entry.reload is None:  # a streamed entry is read again, as sent, on a retry
                    self._undo.append((holder, original))
                holder["reference"] = target
                original = target
            elif original.startswith("urn:"):
                problems.append(issue(self._unresolved(original), code="not-found", location=self._path(entry, holder)))
                continue
            if not self._target_exists(original):
                problems.append(
                    issue(
                        f"reference {original!r} names a resource that does not exist (in this Bundle or the store)",
                        code="not-found",
                        location=self._path(entry, holder),
                    )
                )
        if problems:
            raise FhirError(422, problems)
        if removed:
            held.check_after_removal(entry)

    def _remove_if_not_retained(self, entry: Entry, holder: dict[str, Any], original: str) -> bool:
        """Remove a reference to what is not retained, and note it on the entry (kept across retries)."""
        found = self.retention.not_retained(original, self.base_url)
        if found is None:
            return False
        path = self._path(entry, holder)
        if entry.removed is None:
            entry.removed = {}
        entry.removed.setdefault(path, held.Removal(path, original, *found))
        held.remove(entry.content(), holder)
        return True

    def _unresolved(self, reference: str) -> str:
        """Why a urn reference resolves to nothing: the real cause, in a batch."""
        if reference in self.refused:
            index, why = self.refused[reference]
            return (
                f"reference {reference!r} names Bundle.entry[{index}], which was refused ({why}): this entry "
                "is not stored either"
            )
        if reference in self.bundle_urls:
            return (
                f"reference {reference!r} names Bundle.entry[{self.bundle_urls[reference]}], which a batch "
                "writes after this entry: a batch entry may refer only to entries before it (or send a "
                "transaction)"
            )
        return f"reference {reference!r} names no fullUrl of this Bundle"

    @staticmethod
    def _path(entry: Entry, holder: dict[str, Any]) -> str:
        return f"{path_to(entry.resource, holder, entry.resource_location)}.reference"

    def _conditional_reference(self, reference: str, path) -> str | None:
        resource_type, _, criteria = reference.partition("?")
        if resource_type not in WRITABLE_TYPES:
            return None  # a type this door does not keep: stays as the client wrote it
        found = conditional.find(self.store, resource_type, criteria, location=path())
        if found is None:
            raise FhirError.one(
                422, f"conditional reference {reference!r} matches no resource", code="not-found", location=path()
            )
        return f"{resource_type}/{found}"

    def _target_exists(self, reference: str) -> bool:
        """False only for a local reference to a kept type that is neither written here nor stored."""
        target = local_target(reference, self.base_url)
        if target is None:
            return True
        resource_type, resource_id = target.split("/")
        if resource_type == "ResearchStudy":
            return resource_id == self.study.id
        if resource_type not in WRITABLE_TYPES or target in self.written:
            return True
        if target not in self._exists:
            head = self.store.head(resource_type, resource_id)
            self._exists[target] = head is not None and not head.deleted
        return self._exists[target]

    def _merge(self, entry: Entry) -> Result:
        """A pushed Patient that matched its site's MRN: the stored Patient keeps its id, site and identifiers
        and takes the pushed elements, in a new version only when that changes something."""
        current = self.store.read(entry.resource_type, entry.target_id)
        content = conditional.merged(current.content, entry.content())
        if conditional.same_content(current.content, content):
            return Result(200, current)
        reason = authorise.refusal(
            self.store.actor,
            "fhir.write",
            entry.resource_type,
            "u",
            f"{entry.location} (POST {entry.resource_type} matching Patient/{entry.target_id})",
        )
        if reason is not None:
            raise FhirError.one(403, reason, code="forbidden", location=entry.location)
        stored, _ = self.store.update(entry.resource_type, entry.target_id, content, self.context)
        return Result(200, stored)

    def _update(self, entry: Entry) -> Result:
        if entry.resource_type == "Patient" and self.store.head("Patient", entry.target_id) is None:
            self._patient_site(entry)
        stored, created = self.store.update(
            entry.resource_type, entry.target_id, entry.content(), self.context, if_match=entry.if_match
        )
        if created:
            self._claim_key(entry, stored)
        return Result(201 if created else 200, stored)

    def _claim_key(self, entry: Entry, stored: Stored) -> None:
        """The conditional key of a resource just created from criteria: per the site it landed at, so it does
        not depend on which other sites the client's token names; a twin's insert of the same key fails and
        its unit of work is retried (then it finds this resource)."""
        if entry.claim is not None:
            conditional.claim(self.store, entry.resource_type, entry.claim, stored.resource_id, stored.site)

    def _patient_site(self, entry: Entry) -> str | None:
        if entry.resource_type != "Patient":
            return None
        actor = self.store.actor
        if actor.site is None:
            sites = ", ".join(sorted(actor.sites or ())) or "every site"
            raise FhirError.one(
                422,
                f"a new Patient belongs to the pushing client's site, but this token names "
                f"{sites}: push Patients with a token for exactly one site",
                code="business-rule",
                location=entry.resource_location,
            )
        return actor.site

    def _get(self, entry: Entry) -> Result:
        if entry.resource_type == "ResearchStudy":
            if entry.resource_id != self.study.id:
                raise NotFound(f"ResearchStudy/{entry.resource_id} is not known")
            return Result(200, resource=research_study(self.study))
        if entry.resource_id is None:
            pairs = search.params_of(entry.criteria or "")
            query = search.parse(
                entry.resource_type,
                pairs,
                default_count=self.page_size[0],
                max_count=self.page_size[1],
                study=self.study,
            )
            if query.demographic and not can(self.store.actor, "identifiers.read"):
                raise FhirError.one(
                    403,
                    "searching Patients by name, birth date or gender is for roles that may "
                    f"read identifiers, not {self.store.actor.role}",
                    code="forbidden",
                    location=entry.location,
                )
            return Result(200, resource=searchset(self.store, query, self.base_url))
        if entry.version_id is not None:
            stored = self.store.vread(entry.resource_type, entry.resource_id, entry.version_id)
        else:
            stored = self.store.read(entry.resource_type, entry.resource_id)
        return Result(200, stored)


def searchset(store: ClinicalStore, query: search.SearchQuery, base_url: str) -> dict[str, Any]:
    page = search.run(store, query)
    links = [{"relation": "self", "url": query.link(base_url, query.offset)}]
    if page.has_more:
        links.append({"relation": "next", "url": query.link(base_url, query.offset + query.count)})
    if query.offset > 0 and not query.count_only:
        links.append({"relation": "previous", "url": query.link(base_url, max(0, query.offset - query.count))})
    found: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if query.total != "none" or query.count_only:
        found["total"] = page.total
    found["link"] = links
    matches = store.current(page.heads)
    found["entry"] = [
        {
            "fullUrl": f"{base_url}/{stored.reference}",
            "resource": _elements(stored.content, query),
            "search": {"mode": "match"},
        }
        for stored in matches
    ]
    found["entry"] += [
        {"fullUrl": f"{base_url}/{stored.reference}", "resource": stored.content, "search": {"mode": "include"}}
        for stored in search.included(store, query, matches)
    ]
    if query.ignored:
        found["entry"].append({"resource": ignored_outcome(query.ignored), "search": {"mode": "outcome"}})
    return found


SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
MANDATORY = ("resourceType", "id", "meta")


def _elements(content: dict[str, Any], query: search.SearchQuery) -> dict[str, Any]:
    """_elements: the listed top-level elements (and the mandatory ones), tagged SUBSETTED."""
    if query.elements is None:
        return content
    shown = {key: part for key, part in content.items() if key in MANDATORY or key in query.elements}
    meta = dict(shown.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    shown["meta"] = meta
    return shown


def ignored_outcome(ignored: list[str]) -> dict[str, Any]:
    """What a lenient search left out, as R4 search.html asks: an OperationOutcome entry of mode outcome."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "not-supported", "diagnostics": f"{reason}: ignored"} for reason in ignored
        ],
    }
