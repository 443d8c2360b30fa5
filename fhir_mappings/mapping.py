"""Both directions between form entries and FHIR R4 resources (plain dicts, FHIR JSON shape).

- form_to_resources: a validated form entry -> Observations / Procedures / Conditions (each with a
  stable slot) plus patches for Patient and ResearchSubject.
- resource_to_items: any resource (form door or EHR) -> the item values it carries, canonical.
- form_to_questionnaire: a form -> an SDC-style Questionnaire.
"""

from fhir_mappings.from_fhir import ItemValue, resource_to_items
from fhir_mappings.questionnaire import form_to_questionnaire
from fhir_mappings.to_fhir import FormResources, form_to_resources

__all__ = ["FormResources", "ItemValue", "form_to_questionnaire", "form_to_resources", "resource_to_items"]
