"""The /study door; the study model itself is the package study_model (loader, definitions, rules, units)."""
