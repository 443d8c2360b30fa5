"""Schemathesis against the committed openapi.yaml and the live server: no 5xx, no response off-schema.

A bounded number of examples per operation keeps CI fast; run it longer with
`ECRF_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_openapi.py`.
"""
import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from ecrf.openapi import OPENAPI_FILE

EXAMPLES = int(os.environ.get("ECRF_FUZZ_EXAMPLES", "8"))


def _role_for(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    """A token that may call the operation, so the fuzzer reaches the code behind authorisation."""
    if "$export" in path or path.startswith("/api/v1/exports"):
        return "sponsor", ()
    if path.startswith("/fhir") and method != "GET":
        return "ehr", ("S01",)
    if "/lock" in path or "/unlock" in path or path == "/api/v1/eligibility":
        return "data_manager", ()
    if "/verify" in path:
        return "monitor", ("S01",)
    return "investigator", ("S01",)


def test_no_server_errors_and_responses_match_the_schema(server):
    schema = schemathesis.openapi.from_path(str(OPENAPI_FILE))
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        role, sites = _role_for(operation.method.upper(), operation.path)
        headers = {"Authorization": f"Bearer {server.token(role, *sites, sub=f'fuzz-{role}')}"}

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def call(case):
            case.call_and_validate(base_url=server.base_url, headers=headers,
                                   checks=[not_a_server_error, response_schema_conformance])

        try:
            call()
        except Exception as error:  # noqa: BLE001 - collect every operation's failure, then report all
            failures.append(f"{operation.method.upper()} {operation.path}: {str(error)[:2000]}")
    assert not failures, "\n\n".join(failures)
