"""Browser sign-in with OpenID Connect (issue 16), end to end against a real provider: the certified npm
`oidc-provider`, started here with node, its own login page filled in a real chromium. Authorization code
with PKCE; the ID token's role and site claims mapped as an API token's; re-authentication for signing."""

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import Session

from conftest import running_server
from ecrf.config import Settings
from ecrf.web.models import WebSession
from ecrf.web.sessions import COOKIE, _hash
from testkit.net import free_port
from testkit.servers import wait_until_answering
from web_support import NODE_TOOLS, chromium, missing, node_modules  # noqa: F401 - chromium is a fixture

from playwright.sync_api import Page, expect  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "ecrf-web", secrets.token_urlsafe(24)
ACCOUNTS = {
    "dr-wang": {"roles": ["investigator"], "sites": ["S01"]},
    "dr-zhao": {"roles": ["investigator"], "sites": ["S01"]},
    "visitor": {},
    "cra-liu": {"roles": ["monitor"]},
}


@pytest.fixture(scope="module")
def oidc(database_url, tmp_path_factory) -> Iterator[tuple]:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (apt-get install -y nodejs)")
    node_modules()
    provider_port = free_port()
    issuer = f"http://127.0.0.1:{provider_port}"
    settings = Settings(
        database_url=database_url,
        jwt_secret=secrets.token_urlsafe(32),
        web_dev_login=False,
        oidc_issuer=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        export_worker=False,
        _env_file=None,
    )
    with running_server(settings) as server:
        config = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "accounts": ACCOUNTS,
            "redirect_uri": f"{server.base_url}/web-auth/oidc/callback",
        }
        log = open(tmp_path_factory.mktemp("oidc") / "provider.log", "w+")
        process = subprocess.Popen(
            [node, str(NODE_TOOLS / "oidc_provider.mjs"), str(provider_port), json.dumps(config)],
            cwd=NODE_TOOLS,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def log_tail() -> str:
                log.seek(0)
                return log.read()[-2000:]

            wait_until_answering(
                f"{issuer}/.well-known/openid-configuration", process, seconds=30, log=log_tail, pause=0.2
            )
            yield server, issuer
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


def provider_login(page: Page, login: str) -> None:
    """The provider's own pages: its login form, then (for a client the account has not yet allowed) consent."""
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password: the provider's development login page")
    page.click("button[type=submit]")
    page.wait_for_function("() => !document.querySelector('input[name=login]')")
    page.wait_for_load_state()
    consent = page.locator("button:has-text('Continue')")
    if "/interaction/" in page.url and consent.count():
        consent.click()


def browser_page(chromium, server) -> Page:
    context = chromium.new_context(base_url=server.base_url, locale="en-US")
    context.set_default_timeout(20_000)
    return context.new_page()


def test_sign_in_with_the_hospital_provider_maps_roles_and_sites(oidc, chromium):
    server, issuer = oidc
    page = browser_page(chromium, server)
    page.goto("/")
    expect(page.locator("#dev-login")).to_have_count(0)  # production: no dev sign-in
    page.click("#oidc-login")
    page.wait_for_url(f"{issuer}/**")
    assert "code_challenge_method=S256" in page.url or page.locator("input[name=login]").count()
    provider_login(page, "dr-wang")
    page.wait_for_url(f"{server.base_url}/**")
    expect(page.locator("#who")).to_contain_text("dr-wang")
    expect(page.locator("#who")).to_contain_text("Investigator")
    info = page.evaluate("async () => (await fetch('/web-auth/session')).json()")
    assert info["method"] == "oidc" and info["user_roles"] == ["investigator"] and info["user_sites"] == ["S01"]
    cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("async () => (await fetch('/api/v1/subjects')).status") == 200
    assert page.evaluate("async () => (await fetch('/api/v1/admin/settings')).status") == 403  # the same policy

    # re-authentication (to sign): the provider asks again, and the session is new and fresh
    token = cookie["value"]
    with Session(server.runtime.engine.execution_options(writes=True)) as session:  # BEGIN IMMEDIATE on SQLite
        row = session.get(WebSession, _hash(token))
        row.authenticated_at = datetime.now(UTC) - timedelta(hours=1)
        session.add(row)
        session.commit()
    page.goto("/web-auth/oidc/login?reauth=true")
    page.wait_for_url(f"{issuer}/**")
    assert "prompt=login" in page.url or page.locator("input[name=login]").count()
    provider_login(page, "dr-wang")
    page.wait_for_url(f"{server.base_url}/**")
    expect(page.locator("#who")).to_contain_text("dr-wang")
    fresh = page.evaluate("async () => (await fetch('/web-auth/session')).json()")
    assert datetime.fromisoformat(fresh["authenticated_at"]).replace(tzinfo=UTC) > datetime.now(UTC) - timedelta(
        minutes=1
    )
    with Session(server.runtime.engine.execution_options(writes=True)) as session:  # BEGIN IMMEDIATE on SQLite
        assert session.get(WebSession, _hash(token)) is None  # the old session gave way
    page.context.close()


def test_reauthentication_by_someone_else_and_accounts_without_roles_are_refused(oidc, chromium):
    server, issuer = oidc
    page = browser_page(chromium, server)
    page.goto("/")
    page.click("#oidc-login")
    provider_login(page, "dr-wang")
    expect(page.locator("#who")).to_contain_text("dr-wang")
    page.goto("/web-auth/oidc/login?reauth=true")
    provider_login(page, "dr-zhao")  # another person at the same browser
    page.wait_for_url(f"{server.base_url}/web-auth/oidc/callback**")
    assert "re-authentication must be by the user who is signed in" in page.content()
    page.context.close()

    page = browser_page(chromium, server)
    page.goto("/")
    page.click("#oidc-login")
    provider_login(page, "visitor")
    page.wait_for_url(f"{server.base_url}/web-auth/oidc/callback**")
    assert "cannot use the eCRF" in page.content()
    assert not [c for c in page.context.cookies() if c["name"] == COOKIE]
    page.context.close()


def test_a_callback_not_started_here_is_refused(oidc):
    server, _ = oidc
    with httpx.Client(base_url=server.base_url) as http:
        response = http.get("/web-auth/oidc/callback", params={"state": "forged", "code": "stolen"})
        assert response.status_code == 400 and "not started here" in response.json()["detail"]
        started = http.get("/web-auth/oidc/login")
        assert started.status_code == 302
        location = httpx.URL(started.headers["location"])
        assert location.params["code_challenge_method"] == "S256" and location.params["code_challenge"]
        assert location.params["client_id"] == CLIENT_ID and location.params["nonce"]
        wrong_state = http.get("/web-auth/oidc/callback", params={"state": "other", "code": "x"})
        assert wrong_state.status_code == 400
