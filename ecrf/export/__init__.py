"""Exports: FHIR Bulk Data ($export, async jobs), form CSVs, and the de-identification applied to them."""
