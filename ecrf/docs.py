"""`/docs` (Swagger UI) and `/redoc` served offline: their scripts and styles come from an installed package
(`fastapi-offline`, which ships Swagger UI and ReDoc builds), never from a CDN, so the pages work on a
machine without internet access (a hospital network, a laptop on a train)."""

from importlib import resources

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from ecrf.auth.dependencies import public

ASSETS_PATH = "/docs/assets"
# name -> media type: the only files served (an allow-list; a name is never joined onto a path unchecked)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


def _asset_bytes(name: str) -> bytes:
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


def install(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc and their assets to an app made with docs_url=redoc_url=None."""
    cache: dict[str, bytes] = {}
    openapi_url = app.openapi_url or "/openapi.json"
    open_to_all = [Depends(public)]

    @app.get("/docs", include_in_schema=False, dependencies=open_to_all)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            # validatorUrl: Swagger UI would otherwise load a badge from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False, dependencies=open_to_all)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False, dependencies=open_to_all)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False, dependencies=open_to_all)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no documentation asset {name!r}")
        if name not in cache:
            cache[name] = _asset_bytes(name)
        return Response(cache[name], media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
