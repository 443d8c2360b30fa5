"""De-identification by allow-list: a profile (YAML data) names, per resource type, the only elements
that may leave; everything else, known or not, is dropped. Ids are re-keyed with HMAC-SHA256 under the
study secret, dates are shifted by a secret per-subject offset, birth dates become grouped ages."""

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from ecrf.common.dates import age_in_years as completed_years, date_of as parse_date  # noqa: F401 (export's names)
from ecrf.config import Settings, secret_in_file
from ecrf.export.vocabulary import Vocabulary
from study_model.ucum import is_ucum_like

Handler = Callable[[Any, int | None], Any]
Plan = dict[str, Handler]

PRIMITIVES = frozenset({"keep", "date", "reference", "extension", "coding", "ucum", "system", "arm"})
SCALARS = (str, int, float, bool)
SCALAR_TYPES = frozenset(SCALARS)
LOCAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")
UCUM = "http://unitsofmeasure.org"
MAX_SHIFT_DAYS = 365
CACHE_SIZE = 4096  # pseudonyms and shifts of recent subjects; resource ids repeat rarely


class ProfileError(ValueError):
    pass


class Undeidentifiable(ValueError):
    """A resource this profile cannot de-identify (e.g. a date its shift would move off the calendar); the
    message names no value, as it is shown to the export's owner."""


def study_secret(settings: Settings) -> bytes:
    """ECRF_STUDY_SECRET, else a random secret generated once and kept in a 0600 file."""
    if settings.study_secret:
        return settings.study_secret.encode()
    return secret_in_file(settings.study_secret_file)


@dataclass(frozen=True)
class Profile:
    id: str
    version: str
    title: str
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.id}/{self.version}"

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(self.spec["resources"])


def load_profile(path: Path) -> Profile:
    spec = yaml.safe_load(Path(path).read_text())
    for key in ("id", "version", "pseudonyms", "dates", "ages", "datatypes", "extensions", "resources"):
        if key not in spec:
            raise ProfileError(f"de-identification profile {path} lacks `{key}`")
    if spec["dates"].get("method") != "shift":
        raise ProfileError("dates.method: only `shift` is implemented")
    if not 0 < spec["dates"]["min_days"] <= spec["dates"]["max_days"] <= MAX_SHIFT_DAYS:
        raise ProfileError(
            f"dates: 0 < min_days <= max_days <= {MAX_SHIFT_DAYS} (stored dates keep a year "
            "from the calendar's ends, so a shift of at most a year never leaves it)"
        )
    profile = Profile(str(spec["id"]), str(spec["version"]), str(spec.get("title", "")), spec)
    Deidentifier(profile, b"check")  # compiles every plan: unknown datatypes fail at load
    return profile


def site_only(item: Any) -> bool:
    """An item a de-identified export never carries as it is: identifier-bearing (the birth date) or free text
    (type `text`: the verbatim AE term, a medication's name, its indication; kept at the site)."""
    return bool(getattr(item, "identifier_bearing", False)) or getattr(item, "type", None) == "text"


class Deidentifier:
    """Applies one profile with one study secret. Deterministic: the same input gives the same output."""

    def __init__(self, profile: Profile, secret: bytes, vocabulary: Vocabulary | None = None):
        self.profile = profile
        spec = profile.spec
        vocabulary = vocabulary or Vocabulary()
        rules = dict(spec.get("standard_systems") or {})
        default = _code_rule(rules.pop("default", r"^[A-Za-z0-9][A-Za-z0-9.\-/]{0,31}$"))
        self._system_rules = {system: default for system in vocabulary.systems}
        self._system_rules.update({system: _code_rule(rule) for system, rule in rules.items()})
        self.vocabulary = vocabulary
        self._key = hmac.new(secret, digestmod=hashlib.sha256)
        self._length = int(spec["pseudonyms"].get("length", 32))
        self.keep_ids = frozenset(spec["pseudonyms"].get("keep_ids", ()))
        self._min_days, self._max_days = int(spec["dates"]["min_days"]), int(spec["dates"]["max_days"])
        ages = spec["ages"]
        self.age_top, self.age_item, self._age_url = int(ages["top"]), ages.get("at_item"), ages["extension"]
        self._meta = {"security": list(spec.get("meta_security") or [])}
        self._pseudonyms: dict[str, str] = {}
        self._shifts: dict[str, int] = {}
        self._datatypes: dict[str, Plan] = {}
        self._extensions: dict[str, Plan] = {}
        for name in spec["datatypes"]:
            self._datatype(name)
        for url, fields in spec["extensions"].items():
            self._extensions[url] = self._plan(fields)
        self._resources = {name: self._plan(fields) for name, fields in spec["resources"].items()}

    # -- keys ------------------------------------------------------------------------------

    def pseudonym(self, source_id: str) -> str:
        found = self._pseudonyms.get(source_id)
        if found is None:
            digest = self._key.copy()
            digest.update(b"id\x00" + source_id.encode())
            found = digest.hexdigest()[: self._length]
            if len(self._pseudonyms) >= CACHE_SIZE:  # bounded: memory must not grow with the export
                self._pseudonyms.clear()
            self._pseudonyms[source_id] = found
        return found

    def shift_days(self, patient_id: str) -> int:
        found = self._shifts.get(patient_id)
        if found is None:
            digest = self._key.copy()
            digest.update(b"date-shift\x00" + patient_id.encode())
            raw = digest.digest()
            span = self._max_days - self._min_days + 1
            found = (self._min_days + int.from_bytes(raw[:8], "big") % span) * (-1 if raw[8] & 1 else 1)
            if len(self._shifts) >= CACHE_SIZE:
                self._shifts.clear()
            self._shifts[patient_id] = found
        return found

    @staticmethod
    def shift(text: Any, days: int | None) -> str | None:
        """A FHIR date/dateTime/instant moved by `days`; year-only kept; month precision stays month."""
        if days is None or not isinstance(text, str):
            return None
        try:
            if len(text) == 4:
                return text
            if len(text) == 7:
                return (date(int(text[:4]), int(text[5:7]), 15) + timedelta(days=days)).isoformat()[:7]
            return (date.fromisoformat(text[:10]) + timedelta(days=days)).isoformat() + text[10:]
        except ValueError:
            return None
        except OverflowError:
            raise Undeidentifiable("a date cannot be shifted within the calendar") from None

    def age(self, born: date, on: date) -> tuple[int, bool]:
        """(years, grouped): ages at or over the top are reported as the top, grouped."""
        years = completed_years(born, on)
        return (self.age_top, True) if years >= self.age_top else (years, False)

    # -- resources -------------------------------------------------------------------------

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(self._resources)

    def resource(
        self, content: dict[str, Any], patient_id: str | None, age_at: date | None = None
    ) -> dict[str, Any] | None:
        """The de-identified resource, or None when its type may not leave. `age_at`: Patient only."""
        resource_type = content.get("resourceType")
        plan = self._resources.get(resource_type)
        if plan is None:
            return None
        days = self.shift_days(patient_id) if patient_id else None
        source_id = content.get("id")
        result: dict[str, Any] = {
            "resourceType": resource_type,
            "id": source_id if resource_type in self.keep_ids else self.pseudonym(str(source_id)),
            "meta": self._meta,
        }
        fields = _apply(plan, content, days)
        if fields:
            result.update(fields)
        if resource_type == "Patient":
            born = parse_date(content.get("birthDate"))
            if born is not None and age_at is not None:
                years, grouped = self.age(born, age_at)
                value = {"value": years, "unit": "a", "system": UCUM, "code": "a"}
                if grouped:
                    value = {"value": years, "comparator": ">=", "unit": "a", "system": UCUM, "code": "a"}
                result.setdefault("extension", []).append({"url": self._age_url, "valueAge": value})
        return result

    # -- compiling the profile ----------------------------------------------------------------

    def _datatype(self, name: str) -> Plan:
        if name not in self._datatypes:
            fields = self.profile.spec["datatypes"].get(name)
            if fields is None:
                raise ProfileError(f"unknown datatype {name!r} in profile {self.profile.id}")
            self._datatypes[name] = {}  # placeholder: recursive datatypes resolve to the same dict
            self._datatypes[name].update(self._plan(fields))
        return self._datatypes[name]

    def _plan(self, fields: dict[str, Any]) -> Plan:
        return {element: self._handler(kind) for element, kind in fields.items()}

    def _handler(self, kind: Any) -> Handler:
        if isinstance(kind, dict) and set(kind) in ({"one_of"}, {"pattern"}):
            allowed = _code_rule(kind.get("one_of", kind.get("pattern")))
            return lambda value, _days: value if isinstance(value, str) and allowed(value) else None
        if isinstance(kind, dict):
            return _complex(self._plan(kind))
        if kind == "keep":
            return _keep
        if kind == "coding":
            return self._coding
        if kind == "ucum":
            return self._unit
        if kind == "system":
            return lambda value, _days: value if isinstance(value, str) and value in self._system_rules else None
        if kind == "arm":
            return lambda value, _days: value if isinstance(value, str) and value in self.vocabulary.arms else None
        if kind == "date":
            return self.shift
        if kind == "reference":
            return self._reference
        if kind == "extension":
            return self._extension
        return _complex(self._datatype(kind))

    def _coding(self, value: Any, _days: int | None) -> dict[str, str] | None:
        """A Coding of a standard system with a code of its shape, or one of the study's own codes."""
        if not isinstance(value, dict):
            return None
        system, code = value.get("system"), value.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            return None
        rule = self._system_rules.get(system)
        if (system, code) in self.vocabulary.codes or (rule is not None and rule(code)):
            return {"system": system, "code": code}
        return None

    def _unit(self, value: Any, _days: int | None) -> str | None:
        """A UCUM code without annotations ({...} is free text), or a unit the study declares."""
        if not isinstance(value, str):
            return None
        return value if value in self.vocabulary.units or _plain_ucum(value) else None

    def _reference(self, value: Any, _days: int | None) -> dict[str, str] | None:
        reference = value.get("reference") if isinstance(value, dict) else None
        match = LOCAL_REFERENCE.match(reference) if isinstance(reference, str) else None
        if match is None:
            return None
        resource_type, source_id = match.groups()
        if resource_type in self.keep_ids:
            return {"reference": reference}
        return {"reference": f"{resource_type}/{self.pseudonym(source_id)}"}

    def _extension(self, value: Any, days: int | None) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            return None
        plan = self._extensions.get(value.get("url"))
        fields = _apply(plan, value, days) if plan is not None else None
        return {"url": value["url"], **fields} if fields else None


def _plain_ucum(value: str) -> bool:
    return "{" not in value and len(value) <= 64 and is_ucum_like(value)


def _code_rule(rule: Any) -> Callable[[str], bool]:
    """A profile's rule for codes: a list (one of), `ucum`, or a regular expression (the whole code)."""
    if isinstance(rule, (list, tuple)):
        allowed = frozenset(str(item) for item in rule)
        return allowed.__contains__
    if rule == "ucum":
        return _plain_ucum
    if isinstance(rule, str):
        pattern = re.compile(rule)
        return lambda code: pattern.fullmatch(code) is not None
    raise ProfileError(f"a code rule is a list, `ucum` or a regular expression, not {rule!r}")


def _keep(value: Any, _days: int | None) -> Any:
    return value if isinstance(value, SCALARS) else None


def _complex(plan: Plan) -> Handler:
    def handle(value: Any, days: int | None) -> dict[str, Any] | None:
        return _apply(plan, value, days) if isinstance(value, dict) else None

    return handle


def _apply(plan: Plan, node: dict[str, Any], days: int | None) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for key, value in node.items():
        handle = plan.get(key)
        if handle is None:
            continue
        if type(value) is list:
            kept = []
            for item in value:
                result = handle(item, days)
                if result is not None:
                    kept.append(result)
            if kept:
                out[key] = kept
        elif handle is _keep:  # the common case, inlined
            if type(value) in SCALAR_TYPES:
                out[key] = value
        else:
            result = handle(value, days)
            if result is not None:
                out[key] = result
    return out or None
