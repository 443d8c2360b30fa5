"""Walk every route of the app, including those of included routers (fastapi's lazy `_IncludedRouter`)."""

from starlette.routing import BaseRoute


def every_route(app):
    """(methods, path, route) for every endpoint with dependencies, including those of included routers."""
    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):
            for context in route.effective_route_contexts():
                yield sorted(getattr(context.original_route, "methods", ())), context.path, context
        elif hasattr(route, "dependant"):
            yield sorted(route.methods), route.path, route


def declared_actions(route) -> list[str]:
    """The actions a route declares through `requires(...)`/`public`, however deep in its dependencies."""
    found = []

    def walk(dependant):
        for dependency in dependant.dependencies:
            action = getattr(dependency.call, "action", None)
            if action:
                found.append(action)
            walk(dependency)

    walk(route.dependant)
    for dependency in getattr(route, "dependencies", None) or []:
        action = getattr(dependency.dependency, "action", None)
        if action:
            found.append(action)
    return found


def every_operation(app) -> set[tuple[str, str]]:
    """Every (method, path template) the app answers, the plain Starlette routes FastAPI adds itself
    (/openapi.json, /docs, /redoc) included. HEAD, which Starlette adds to those GET routes, is left out;
    anything that is not a route with methods (a mount) is listed with method "*"."""
    operations = {(method, path) for methods, path, _ in every_route(app) for method in methods}
    for route in app.routes:
        if hasattr(route, "effective_route_contexts") or hasattr(route, "dependant"):
            continue
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", repr(route))
        if methods:
            operations |= {(method, path) for method in methods if method != "HEAD"}
        elif isinstance(route, BaseRoute):
            operations.add(("*", path))
    return operations
