"""FHIR-standard URIs (code systems and extensions defined by HL7, not by a study)."""

UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
MCODE_HISTOLOGY_EXTENSION = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
QUESTIONNAIRE_UNIT = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
QUESTIONNAIRE_UNIT_OPTION = "http://hl7.org/fhir/StructureDefinition/questionnaire-unitOption"
MIN_VALUE = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX_VALUE = "http://hl7.org/fhir/StructureDefinition/maxValue"

# Statuses that mean "this resource carries no fact".
VOID_STATUSES = frozenset({"entered-in-error", "cancelled", "not-done", "refuted"})
