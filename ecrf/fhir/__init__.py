"""The FHIR R4 door: REST interactions, transaction/batch Bundles and search over the clinical store."""
