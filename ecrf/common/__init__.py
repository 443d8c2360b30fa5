"""Shared leaves at the bottom of ecrf: clock and site dates, dates, domain errors, paging.

Nothing here imports another ecrf package (only the standard library, SQLAlchemy/FastAPI types and
fhir_mappings), so every layer above may use it (tests/layers.toml).
"""
