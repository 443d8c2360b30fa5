"""Browser sessions of the web door (issue 16), over real HTTP on both backends: cookie flags, CSRF on every
state-changing call a cookie authenticates, idle and absolute expiry, sign-out, re-authentication to sign, and
the same policy as bearer tokens (the session only says who the caller is)."""

import secrets
from datetime import UTC, datetime, timedelta

import httpx
from crf_support import VALID, path
from sqlmodel import Session

from ecrf.config import Settings
from ecrf.web.models import WebSession
from ecrf.web.sessions import COOKIE, _hash

from conftest import running_server


def browser(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=60)


def sign_in(http: httpx.Client, role: str, site: str | None = "S01", **extra) -> dict:
    response = http.post("/web-auth/dev-login", json={"role": role, "site": site, **extra})
    assert response.status_code == 200, response.text
    info = http.get("/web-auth/session").json()
    assert info["signed_in"] is True
    return info


def test_the_page_is_served_at_the_root_with_its_files_and_a_strict_policy(server):
    with browser(server) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/web/app.js"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert http.get("/web/app.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/web/i18n/zh.json").json()["signin.title"] == "登录"
        assert http.get("/web/../config.py").status_code == 404
        assert http.get("/web/%2e%2e/config.py").status_code == 404
        assert http.get("/web/nothing.js").status_code == 404


def test_cookie_is_httponly_samesite_strict_and_secure_behind_tls(server):
    with browser(server) as http:
        response = http.post("/web-auth/dev-login", json={"role": "investigator", "site": "S01"})
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain http on 127.0.0.1: a Secure cookie would never come back
        behind_tls = http.post(
            "/web-auth/dev-login", json={"role": "investigator", "site": "S01"}, headers={"X-Forwarded-Proto": "https"}
        )  # uvicorn trusts the proxy on 127.0.0.1
        assert "Secure" in behind_tls.headers["set-cookie"]


def test_a_cookie_call_reads_without_csrf_but_every_write_needs_its_token(server):
    with browser(server) as http:
        info = sign_in(http, "coordinator")
        assert info["user_roles"] == ["coordinator"] and info["user_sites"] == ["S01"]
        assert "subject.enrol" in info["actions"] and "form.sign" not in info["actions"]
        assert http.get("/api/v1/subjects").status_code == 200
        body = {"site": "S01", "mrn": secrets.token_hex(6), "consent_date": "2026-01-05"}
        refused = http.post("/api/v1/subjects", json=body)
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
        wrong = http.post("/api/v1/subjects", json=body, headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403
        created = http.post("/api/v1/subjects", json=body, headers={"X-CSRF-Token": info["csrf"]})
        assert created.status_code == 201, created.text
        # the same policy as for tokens: a coordinator may not verify, at another site nothing exists
        form = path(created.json()["id"], "ctc", VALID["ctc"][0])
        assert http.post(form + "/verify", json={}, headers={"X-CSRF-Token": info["csrf"]}).status_code == 403
        assert (
            http.post(
                "/api/v1/subjects", json={**body, "site": "S02", "mrn": "x1"}, headers={"X-CSRF-Token": info["csrf"]}
            ).status_code
            == 403
        )


def test_a_bearer_token_wins_over_a_cookie(server):
    with browser(server) as http:
        sign_in(http, "coordinator")
        headers = {"Authorization": f"Bearer {server.token('sponsor')}"}
        assert http.get("/api/v1/subjects", headers=headers).status_code == 403


def test_logout_ends_the_session_on_the_server_and_needs_csrf(server):
    with browser(server) as http:
        info = sign_in(http, "monitor", None)
        token = http.cookies[COOKIE]
        assert info["user_sites"] is None
        assert http.post("/web-auth/logout", json={}).status_code == 403
        response = http.post("/web-auth/logout", json={}, headers={"X-CSRF-Token": info["csrf"]})
        assert response.status_code == 200 and f'{COOKIE}=""' in response.headers["set-cookie"]
        assert http.get("/web-auth/session").json()["signed_in"] is False
        with Session(server.runtime.engine.execution_options(writes=True)) as session:
            assert session.get(WebSession, _hash(token)) is None
    with httpx.Client(base_url=server.base_url, cookies={COOKIE: token}) as stolen:  # a copy of the old cookie
        ended = stolen.get("/api/v1/subjects")
        assert ended.status_code == 401 and "sign in again" in ended.json()["detail"]


def _age(server, token: str, **fields) -> None:
    with Session(server.runtime.engine.execution_options(writes=True)) as session:
        row = session.get(WebSession, _hash(token))
        for name, value in fields.items():
            setattr(row, name, value)
        session.add(row)
        session.commit()


def test_idle_and_absolute_expiry(server):
    now = datetime.now(UTC)
    with browser(server) as http:
        sign_in(http, "investigator")
        _age(server, http.cookies[COOKIE], last_seen_at=now - timedelta(minutes=server.settings.web_idle_minutes + 1))
        assert http.get("/api/v1/subjects").status_code == 401
    with browser(server) as http:
        sign_in(http, "investigator")
        _age(server, http.cookies[COOKIE], expires_at=now - timedelta(seconds=1))
        assert http.get("/api/v1/subjects").status_code == 401
        assert http.get("/web-auth/session").json()["signed_in"] is False
    with browser(server) as http:  # activity keeps a session alive within its absolute lifetime
        sign_in(http, "investigator")
        _age(server, http.cookies[COOKIE], last_seen_at=now - timedelta(minutes=server.settings.web_idle_minutes - 1))
        assert http.get("/api/v1/subjects").status_code == 200
        with Session(server.runtime.engine.execution_options(writes=True)) as session:
            seen = session.get(WebSession, _hash(http.cookies[COOKIE])).last_seen_at
        assert (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) > now - timedelta(seconds=5)


def test_signing_needs_a_recent_authentication(server):
    with browser(server) as site, browser(server) as monitor:
        coordinator = sign_in(site, "coordinator")
        subject = site.post(
            "/api/v1/subjects",
            json={"site": "S01", "mrn": secrets.token_hex(6), "consent_date": "2026-01-05"},
            headers={"X-CSRF-Token": coordinator["csrf"]},
        ).json()
        visit, visit_date, items = VALID["ctc"]
        form = path(subject["id"], "ctc", visit)
        saved = site.put(
            form, json={"items": items, "visit_date": visit_date}, headers={"X-CSRF-Token": coordinator["csrf"]}
        )
        assert saved.status_code in (200, 201), saved.text
        checker = sign_in(monitor, "monitor", "S01")
        assert monitor.post(form + "/verify", json={}, headers={"X-CSRF-Token": checker["csrf"]}).status_code == 200
    with browser(server) as http:
        info = sign_in(http, "investigator", sub="dr-li")
        _age(
            server,
            http.cookies[COOKIE],
            authenticated_at=datetime.now(UTC) - timedelta(seconds=server.settings.web_reauth_seconds + 5),
        )
        stale = http.post(form + "/sign", json={"meaning": "approved"}, headers={"X-CSRF-Token": info["csrf"]})
        assert stale.status_code == 401 and "21 CFR 11.200" in stale.json()["detail"]
        info = sign_in(http, "investigator", sub="dr-li")  # signing in again is the re-authentication
        signed = http.post(form + "/sign", json={"meaning": "approved"}, headers={"X-CSRF-Token": info["csrf"]})
        assert signed.status_code == 200, signed.text
        assert signed.json()["signature"]["meaning"] == "approved"


def test_dev_sign_in_is_refused_outside_dev_mode_and_checks_role_and_site(server, tmp_path):
    with browser(server) as http:
        assert http.post("/web-auth/dev-login", json={"role": "nobody"}).status_code == 422
        assert http.post("/web-auth/dev-login", json={"role": "coordinator"}).status_code == 422  # a site role
        assert http.post("/web-auth/dev-login", json={"role": "coordinator", "site": "S99"}).status_code == 422
        form_post = http.post(
            "/web-auth/dev-login", content=b"role=admin", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert form_post.status_code == 415  # a cross-site HTML form cannot sign anyone in
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'prod.db'}", jwt_secret="s" * 40, web_dev_login=False, _env_file=None
    )
    with running_server(settings) as production, httpx.Client(base_url=production.base_url) as http:
        assert http.get("/web-auth/session").json()["dev_login"] is False
        assert http.post("/web-auth/dev-login", json={"role": "admin"}).status_code == 404


def test_each_browser_session_has_its_own_rate_budget_behind_one_address(tmp_path):
    """A hospital's users often share one address (a proxy or NAT): one user's pace must not throttle another."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'rate.db'}", jwt_secret="r" * 40, rate_limit_per_minute=4, _env_file=None
    )
    with (
        running_server(settings) as limited,
        httpx.Client(base_url=limited.base_url) as first,
        httpx.Client(base_url=limited.base_url) as second,
    ):
        for http in (first, second):
            assert http.post("/web-auth/dev-login", json={"role": "monitor"}).status_code == 200
        statuses = [first.get("/web-auth/session").status_code for _ in range(5)]
        assert statuses[-1] == 429 and 200 in statuses
        assert second.get("/web-auth/session").status_code == 200
