"""The FastAPI application: two doors (eCRF API under /api/v1, FHIR R4 under /fhir) onto one store."""
from fastapi import Depends, FastAPI, Request
from ecrf.responses import JSONBody
from sqlalchemy import text

from ecrf import errors
from ecrf.auth.dependencies import public
from ecrf.config import Settings
from ecrf.runtime import Runtime
from ecrf.security import RequestGuard
from ecrf.study.router import router as study_router

API_PREFIX = "/api/v1"
FHIR_PREFIX = "/fhir"


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.start(settings or Settings())
    app = FastAPI(
        title="eCRF backend",
        version="0.1.0",
        description=f"Electronic case report forms with a FHIR R4 door. Study: {runtime.study.id}.",
        default_response_class=JSONBody,
    )
    app.state.runtime = runtime
    app.state.verifier = runtime.verifier
    errors.install(app)
    app.add_middleware(RequestGuard, settings=runtime.settings)

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

    app.include_router(study_router, prefix=API_PREFIX)
    return app
