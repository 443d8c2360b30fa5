"""The resource types the study keeps, as forms/study.yaml names them (`kept_resource_types`): the types the
store holds, the engine searches and the FHIR door writes. Read at import: the routes are built from them."""

import yaml

from study_model.loader import default_study_dir


def _kept_types() -> tuple[str, ...]:
    study = yaml.safe_load((default_study_dir() / "study.yaml").read_text(encoding="utf-8"))
    return tuple(study["kept_resource_types"])


WRITABLE_TYPES = _kept_types()
