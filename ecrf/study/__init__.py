"""The study definition: loaded from YAML data (forms/), validated, never hard-coded."""

from ecrf.study.loader import Issue, StudyDefinitionError, default_study_dir, load_study

__all__ = ["Issue", "StudyDefinitionError", "default_study_dir", "load_study"]
