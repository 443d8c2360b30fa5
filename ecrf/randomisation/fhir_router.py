"""The FHIR side of randomisation: `POST ResearchSubject/{id}/$randomize` (a custom operation: FHIR R4 has no
standard one) and its OperationDefinition. The allocation is the eCRF door's, one transaction."""

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ecrf.auth.actor import Actor
from ecrf.auth.dependencies import requires
from ecrf.fhir.authorise import require
from ecrf.fhir.media import respond
from ecrf.randomisation import service
from ecrf.common.errors import NotFound
from ecrf.responses import fhir_base

router = APIRouter(tags=["randomisation"])
OPERATION_ID = "ResearchSubject-randomize"


def operation_definition(base: str) -> dict[str, Any]:
    def out(name: str, kind: str, doc: str) -> dict[str, Any]:
        return {"name": name, "use": "out", "min": 1, "max": "1", "type": kind, "documentation": doc}

    return {
        "resourceType": "OperationDefinition",
        "id": OPERATION_ID,
        "url": f"{base}/OperationDefinition/{OPERATION_ID}",
        "name": "Randomize",
        "title": "Randomise a research subject (system allocation, concealed until allocation)",
        "status": "active",
        "kind": "operation",
        "code": "randomize",
        "resource": ["ResearchSubject"],
        "system": False,
        "type": False,
        "instance": True,
        "affectsState": True,
        "description": "Allocates the next unused slot of the subject's stratum (stratified permuted blocks) in one "
        "transaction with the randomisation form, ResearchSubject.assignedArm, identifier (the "
        "randomisation number) and status on-study. No input parameters. The first call answers "
        "201, a repeat 200 with the same allocation; not eligible, no consent or an exhausted list "
        "is 409 (OperationOutcome). There is no undo.",
        "parameter": [
            out("arm", "string", "the allocated arm (ResearchStudy.arm.name)"),
            out("randomisationNumber", "string", "R-<site>-<sequence>"),
            out("randomisationDate", "date", "the site's date at allocation"),
            out("stratum", "string", "the stratum the subject's data put it in"),
            out("subject", "Reference", "the ResearchSubject, as updated"),
        ],
    }


def _parameters(view: dict[str, Any], base: str) -> dict[str, Any]:
    parameters = [{"name": "arm", "valueString": view["arm"]}]
    if view.get("randomisation_number"):
        parameters.append({"name": "randomisationNumber", "valueString": view["randomisation_number"]})
    if view.get("randomisation_date"):
        parameters.append({"name": "randomisationDate", "valueDate": view["randomisation_date"]})
    if view.get("stratum"):
        parameters.append({"name": "stratum", "valueString": view["stratum"]})
    parameters.append({"name": "subject", "valueReference": {"reference": f"ResearchSubject/{view['subject_id']}"}})
    return {"resourceType": "Parameters", "parameter": parameters}


@router.post("/ResearchSubject/{resource_id}/$randomize", summary="Randomise the subject (custom operation)")
async def randomize(request: Request, resource_id: str, actor: Actor = Depends(requires("randomisation.allocate"))):
    """Allocate as `POST /api/v1/subjects/{id}/randomise`; answers a Parameters resource (201, repeat 200)."""
    require(actor, "randomisation.allocate", "ResearchSubject", "update")
    runtime = request.app.state.runtime
    view, created = await run_in_threadpool(service.randomise_with_retry, runtime, actor, resource_id, source="fhir")
    base = fhir_base(request)
    return respond(_parameters(view, base), 201 if created else 200)


@router.get("/OperationDefinition/{resource_id}", summary="The OperationDefinition of $randomize")
def read_operation_definition(request: Request, resource_id: str, actor: Actor = Depends(requires("fhir.read"))):
    if resource_id != OPERATION_ID:
        raise NotFound(f"OperationDefinition/{resource_id} is not known; this server defines {OPERATION_ID}")
    return respond(operation_definition(fhir_base(request)))
