"""FHIR search over the store, request-free: the engine (`engine.py`) the FHIR door and a bulk export's
`_typeFilter` both run, and the resource types the study keeps (`types.py`). Below the doors
(tests/layers.toml); its refusals are `ecrf.common.outcome.FhirError`."""
