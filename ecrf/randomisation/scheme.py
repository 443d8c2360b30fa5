"""The randomisation scheme of a study, read from `<study dir>/randomisation.yaml` and checked against the study.

Nothing study-specific is in Python: arms and their ratio, the stratification factors (the site, or the
latest value of an item in groups), block sizes, list length and the number's pattern are all in the file.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from study_model.definitions import StudyDef

FILE = "randomisation.yaml"


class SchemeError(ValueError):
    pass


@dataclass(frozen=True)
class Factor:
    name: str
    item: str | None  # None: the subject's site
    groups: dict[str, tuple[str, ...]]  # group -> item values in it (empty for the site)

    def group_of(self, value: Any) -> str | None:
        for group, values in self.groups.items():
            if str(value) in values:
                return group
        return None


@dataclass(frozen=True)
class Scheme:
    form: str
    visit: str
    arm_item: str
    date_item: str
    ratio: dict[str, int]
    block_sizes: tuple[int, ...]
    list_length: int
    factors: tuple[Factor, ...]
    number: str
    identifier_system: str
    strata: tuple[str, ...]  # every stratum id, in a fixed order
    spec: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the scheme as loaded: the lists were generated for exactly this scheme."""
        return hashlib.sha256(orjson.dumps(self.spec, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @property
    def derived_items(self) -> frozenset[str]:
        return frozenset({self.arm_item, self.date_item})

    def number_for(self, site: str, sequence: int) -> str:
        return self.number.format(site=site, sequence=sequence)


def load_scheme(study_dir: Path, study: StudyDef) -> Scheme | None:
    """The study's scheme, or None when the study has no randomisation.yaml (randomisation is then off)."""
    path = Path(study_dir) / FILE
    if not path.exists():
        return None
    spec = yaml.safe_load(path.read_text()) or {}
    problems: list[str] = []

    def need(key: str) -> Any:
        if key not in spec:
            problems.append(f"{key}: required")
        return spec.get(key)

    form_id, visit, arm_item, date_item = need("form"), need("visit"), need("arm_item"), need("date_item")
    ratio, sizes, length = need("ratio") or {}, need("block_sizes") or [], need("list_length")
    number, system, strata = need("number"), need("identifier_system"), need("strata") or []
    arms = {arm.id for arm in study.arms}
    try:
        form = study.form(form_id)
        if visit not in form.visits:
            problems.append(f"visit: form {form_id} is not collected at {visit}")
        for key, item in (("arm_item", arm_item), ("date_item", date_item)):
            try:
                form.item(item)
            except KeyError:
                problems.append(f"{key}: form {form_id} has no item {item!r}")
    except KeyError:
        problems.append(f"form: the study has no form {form_id!r}")
    if (
        not isinstance(ratio, dict)
        or set(ratio) != arms
        or not all(isinstance(w, int) and w > 0 for w in ratio.values())
    ):
        problems.append(f"ratio: a positive whole weight for each arm of the study ({', '.join(sorted(arms))})")
        ratio = {arm: 1 for arm in sorted(arms)}
    total = sum(ratio.values())
    if (
        not sizes
        or not all(isinstance(s, int) and s > 0 and s % total == 0 for s in sizes)
        or len(set(sizes)) != len(sizes)
    ):
        problems.append(f"block_sizes: distinct multiples of the ratio's sum ({total})")
    if not isinstance(length, int) or length < 1:
        problems.append("list_length: a positive whole number")
    factors = []
    for index, factor in enumerate(strata):
        name = factor.get("factor")
        if factor.get("item") is None:
            if name != "site":
                problems.append(f"strata[{index}]: a factor is the site or an item with groups")
            factors.append(Factor(name or "site", None, {}))
            continue
        if not study.has_item(factor["item"]):
            problems.append(f"strata[{index}].item: the study has no item {factor['item']!r}")
        groups = {str(g): tuple(str(v) for v in values) for g, values in (factor.get("groups") or {}).items()}
        if not groups:
            problems.append(f"strata[{index}].groups: required")
        factors.append(Factor(name or factor["item"], factor["item"], groups))
    try:
        (number or "").format(site="S", sequence=1)
    except (KeyError, ValueError, IndexError):
        problems.append("number: a pattern with {site} and {sequence}")
    if problems:
        raise SchemeError(f"{path}: " + "; ".join(problems))
    levels = [[site.id for site in study.sites] if f.item is None else list(f.groups) for f in factors]
    ids = [""]
    for level in levels:
        ids = [f"{prefix}-{value}" if prefix else value for prefix in ids for value in level]
    return Scheme(
        form=form_id,
        visit=visit,
        arm_item=arm_item,
        date_item=date_item,
        ratio=dict(ratio),
        block_sizes=tuple(sizes),
        list_length=length,
        factors=tuple(factors),
        number=number,
        identifier_system=system,
        strata=tuple(ids) if factors else ("all",),
        spec=spec,
    )
