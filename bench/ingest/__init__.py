"""End-to-end FHIR ingest benchmark: `python -m bench.ingest` (see __main__.py)."""
