"""Schemathesis against the committed openapi.yaml and the live server: no 5xx, no status code the document
does not list for the operation (ecrf/openapi_errors.py), no response off-schema.

A bounded number of examples per operation keeps CI fast; run it longer with
`ECRF_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_openapi.py`.
"""

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from ecrf.app import create_app
from ecrf.auth.policy import PERMISSIONS
from ecrf.config import Settings
from ecrf.openapi import OPENAPI_FILE
from route_support import declared_actions, every_route

EXAMPLES = int(os.environ.get("ECRF_FUZZ_EXAMPLES", "8"))


SITE_ROLES = ("investigator", "coordinator", "monitor", "ehr")
PREFERENCE = ("investigator", "monitor", "data_manager", "coordinator", "ehr", "sponsor", "admin")


def _declared_actions() -> dict[tuple[str, str], list[str]]:
    app = create_app(Settings(database_url="sqlite://", jwt_secret="fuzz", _env_file=None))
    return {(method, path): declared_actions(route) for methods, path, route in every_route(app) for method in methods}


def _role_for(actions: list[str], method: str, path: str) -> tuple[str, tuple[str, ...]]:
    """A token that may call the operation (by the action it declares), so the fuzzer reaches the code
    behind authorisation. FHIR writes go through the ehr client, as in production."""
    allowed = set.intersection(*(set(PERMISSIONS.get(action, ())) for action in actions)) if actions else set()
    if path.startswith("/fhir") and method != "GET" and "ehr" in allowed:
        allowed = {"ehr"}
    role = next((role for role in PREFERENCE if role in allowed), "investigator")
    return role, ("S01",) if role in SITE_ROLES else ()


def test_no_server_errors_and_responses_match_the_schema(server):
    schema = schemathesis.openapi.from_path(str(OPENAPI_FILE))
    actions = _declared_actions()
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        method = operation.method.upper()
        role, sites = _role_for(actions.get((method, operation.path), []), method, operation.path)
        headers = {"Authorization": f"Bearer {server.token(role, *sites, sub=f'fuzz-{role}')}"}

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def call(case):
            case.call_and_validate(
                base_url=server.base_url,
                headers=headers,
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            )

        try:
            call()
        except Exception as error:  # noqa: BLE001 - collect every operation's failure, then report all
            failures.append(f"{operation.method.upper()} {operation.path}: {str(error)[:2000]}")
    assert not failures, "\n\n".join(failures)
