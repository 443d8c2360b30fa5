"""The FastAPI application: two doors (eCRF API under /api/v1, FHIR R4 under /fhir) onto one store."""

from fastapi import Depends, FastAPI, Request
from ecrf.responses import FHIR_PREFIX, JSONBody
from sqlalchemy import text

from ecrf import docs, errors, openapi_errors
from ecrf.cdisc.router import router as cdisc_router
from ecrf.auth.dependencies import public
from ecrf.config import Settings
from ecrf.export.bulk_router import router as export_fhir_router
from ecrf.export.forms_router import router as export_forms_router
from ecrf.fhir.everything import router as everything_router
from ecrf.fhir.media import outcome_response
from ecrf.common.outcome import FhirError
from ecrf.fhir.router import router as fhir_router
from ecrf.runtime import Runtime
from ecrf.security import RequestGuard
from ecrf.study.router import router as study_router
from ecrf.admin.router import router as admin_router
from ecrf.audit.access.hook import RecordAccess
from ecrf.audit.access.router import router as access_log_router
from ecrf.audit.router import router as audit_router
from ecrf.crf.questionnaire_router import router as questionnaire_router
from ecrf.crf.router import router as crf_router
from ecrf.crf.entries_router import router as entries_router
from ecrf.safety.router import router as safety_router
from ecrf.eligibility.router import router as eligibility_router
from ecrf.endpoints.router import router as endpoints_router
from ecrf.queries.router import router as queries_router
from ecrf.randomisation.fhir_router import router as randomisation_fhir_router
from ecrf.randomisation.router import router as randomisation_router
from ecrf.reports.router import router as reports_router
from ecrf.subjects.router import router as subjects_router
from ecrf.web import sessions as web_sessions
from ecrf.web.router import router as web_router
from ecrf.smart.router import TOKEN_PATH, admin_router as smart_clients_router, router as smart_router
from ecrf.smart.service import SmartTokens

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.start(settings or Settings())
    app = FastAPI(
        title="eCRF backend",
        version="0.1.0",
        description=f"Electronic case report forms with a FHIR R4 door. Study: {runtime.study.id}.",
        default_response_class=JSONBody,
        docs_url=None,
        redoc_url=None,  # served offline by ecrf/docs.py
    )
    app.state.runtime = runtime
    app.state.verifier = runtime.verifier
    app.state.cookie_actor = web_sessions.cookie_actor  # browser sessions of the web door (ecrf/web)
    runtime.verifier.smart = SmartTokens(runtime.settings, runtime.engine)  # access tokens of /auth/token
    errors.install(app)  # domain and store errors, validation, outages: one mapping to status and body
    app.add_exception_handler(FhirError, _fhir_error)  # a FHIR refusal: its OperationOutcome and status
    app.add_middleware(RecordAccess)  # identified data a response shows, in the access log before it leaves
    app.add_middleware(
        RequestGuard,
        settings=runtime.settings,
        bundle_paths=frozenset({FHIR_PREFIX, FHIR_PREFIX + "/"}),
        form_paths=frozenset({TOKEN_PATH}),
    )

    @app.get("/healthz", tags=["health"], dependencies=[Depends(public)])
    def healthz(request: Request) -> dict:
        """Database reachability and the loaded study; no token needed."""
        try:
            with runtime.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            database = "ok"
        except Exception:  # noqa: BLE001 - any failure means unreachable
            database = "unreachable"
        status = 200 if database == "ok" else 503
        body = {"status": "ok" if status == 200 else "degraded", "database": database, "study": runtime.study.id}
        return JSONBody(body, status_code=status)

    _document_error_shape(app)
    openapi_errors.install(app)
    docs.install(app)
    app.include_router(study_router, prefix=API_PREFIX)
    app.include_router(subjects_router, prefix=API_PREFIX)
    app.include_router(entries_router, prefix=API_PREFIX)  # before crf_router, whose {visit_id} matches 'entries'
    app.include_router(crf_router, prefix=API_PREFIX)
    app.include_router(safety_router, prefix=API_PREFIX)
    app.include_router(eligibility_router, prefix=API_PREFIX)
    app.include_router(endpoints_router, prefix=API_PREFIX)
    app.include_router(queries_router, prefix=API_PREFIX)
    app.include_router(audit_router, prefix=API_PREFIX)
    app.include_router(access_log_router, prefix=API_PREFIX)
    app.include_router(export_forms_router, prefix=API_PREFIX)
    app.include_router(cdisc_router, prefix=API_PREFIX)
    app.include_router(reports_router, prefix=API_PREFIX)
    app.include_router(admin_router, prefix=API_PREFIX)
    app.include_router(randomisation_router, prefix=API_PREFIX)
    app.include_router(smart_clients_router, prefix=API_PREFIX)
    app.include_router(smart_router)  # /fhir/.well-known/smart-configuration, /auth/token, /auth/jwks
    app.include_router(export_fhir_router, prefix=FHIR_PREFIX)  # before the FHIR door's catch-all /fhir/{type}/...
    app.include_router(everything_router, prefix=FHIR_PREFIX)  # Patient/{id}/$everything, before the catch-all
    app.include_router(questionnaire_router, prefix=FHIR_PREFIX)
    app.include_router(randomisation_fhir_router, prefix=FHIR_PREFIX)  # before the catch-all of unkept types
    app.include_router(fhir_router, prefix=FHIR_PREFIX)
    app.include_router(web_router)  # the clinicians' screens at /, over /api/v1
    return app


async def _fhir_error(request: Request, error: FhirError):
    return outcome_response(error)


def _document_error_shape(app: FastAPI) -> None:
    """Publish the 422 body the service really sends (see ecrf/errors.py), not FastAPI's default."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ValidationError"] = {
            "type": "object",
            "title": "ValidationError",
            "required": ["item", "rule", "message"],
            "properties": {"item": {"type": "string"}, "rule": {"type": "string"}, "message": {"type": "string"}},
        }
        schemas["HTTPValidationError"] = {
            "type": "object",
            "title": "HTTPValidationError",
            "description": "Under /api/v1: detail and every failing item. Under /fhir: an OperationOutcome.",
            "properties": {
                "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                "issue": {"type": "array", "items": {"type": "object"}},
            },
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
