"""The study model: what a study is, as data (forms/), read and checked once.

Pure like fhir_mappings (no database, no request, nothing of ecrf): `definitions` (the typed model: study,
visits, forms, items, criteria), `rules` (the rule language of checks, derivations and criteria, its node kinds
declared once, and its validation), `derivation` (derived items), `units` and `ucum` (units of measure), `loader`
(reads forms/ into a StudyDef and reports every problem at once). fhir_mappings maps this model to and from FHIR."""
