"""GET /fhir/Questionnaire/{form_id}: a form definition as an SDC-style FHIR R4 Questionnaire (read by its FHIR
id, the form id with `-` for `_`, or by the form id itself)."""

from fastapi import APIRouter, Depends, HTTPException, Request

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.fhir.authorise import require
from ecrf.responses import FHIRBody
from fhir_mappings.mapping import form_to_questionnaire
from fhir_mappings.questionnaire import questionnaire_id

router = APIRouter(tags=["fhir"])


@router.get("/Questionnaire/{form_id}")
def read_questionnaire(form_id: str, request: Request, actor: Actor = Depends(requires("study.read"))) -> FHIRBody:
    """The form as a Questionnaire: item codes, units, answer options, enableWhen for conditional items."""
    require(actor, "study.read", "Questionnaire", "read")  # a token's SMART scopes, as on every /fhir read
    study = request.app.state.runtime.study
    found = next((form.id for form in study.forms if form_id in (form.id, questionnaire_id(form.id))), None)
    if found is None:
        raise HTTPException(404, f"Questionnaire/{form_id} is not known")
    return FHIRBody(form_to_questionnaire(study, found))
