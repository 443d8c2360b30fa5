"""/docs and /redoc work without internet access: every script, style and image their pages reference is
served by this server (from the installed fastapi-offline package), none comes from elsewhere."""

import re
from urllib.parse import urljoin, urlparse

import pytest

REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")
MEDIA = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def _references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(html)]


@pytest.mark.parametrize(
    "page, needs",
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
    ],
)
def test_a_docs_page_and_everything_it_references_come_from_this_server(server, page, needs):
    with server.client() as http:
        response = http.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html = response.text
        assert "cdn." not in html and "fonts.googleapis" not in html and "validator.swagger.io" not in html
        references = _references(html)
        assert {urlparse(r).path.rsplit("/", 1)[-1] for r in references} >= needs, references
        for reference in references:
            url = urljoin(f"{server.base_url}{page}", reference)
            assert urlparse(url).netloc == urlparse(server.base_url).netloc, f"{page} loads {reference} from elsewhere"
            asset = http.get(url)
            assert asset.status_code == 200, reference
            suffix = "." + url.rsplit(".", 1)[-1]
            assert asset.headers["content-type"].startswith(MEDIA[suffix]), (reference, asset.headers["content-type"])
            assert len(asset.content) > (100_000 if suffix == ".js" else 1_000), reference


def test_only_the_listed_assets_are_served(server):
    with server.client() as http:
        assert http.get("/docs/assets/..%2Fcore.py").status_code == 404
        assert http.get("/docs/assets/core.py").status_code == 404
        assert http.get("/docs/oauth2-redirect").status_code == 200
