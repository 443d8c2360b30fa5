"""Study definitions and FHIR R4 mappings: a pure library (no database, no HTTP, no `ecrf`)."""
