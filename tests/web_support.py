"""Browser test support: Debian's chromium driven by Playwright for Python, and the node tools of
tests/web_node (axe-core, oidc-provider). Outside CI a missing browser or tool skips with its reason; with
CI=true it fails, as PostgreSQL's absence does."""

import atexit
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ECRF_TEST_CHROMIUM", "/usr/bin/chromium")
NODE_TOOLS = Path(__file__).resolve().parent / "web_node"
SCREENSHOTS = os.environ.get("ECRF_SCREENSHOTS")  # a folder: the browser tests save the README's screenshots


def missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser tests must run in CI: {reason}")
    pytest.skip(reason)


def node_modules() -> Path:
    """tests/web_node/node_modules, installed from its lock file (npm ci) when absent."""
    modules = NODE_TOOLS / "node_modules"
    if not (modules / "axe-core").is_dir() or not (modules / "oidc-provider").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            missing("npm is not installed (apt-get install -y nodejs npm)")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_TOOLS, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            missing(f"npm ci in tests/web_node failed: {done.stderr.strip()[-500:]}")
    return modules


_BROWSER: list = []  # one Playwright and one chromium for the whole run, whichever module asks first


def _close_browser() -> None:
    if _BROWSER:
        browser, playwright = _BROWSER
        browser.close()
        playwright.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """Each browser test module imports this fixture; they all share one browser (Playwright's sync API
    allows one running instance per thread)."""
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    if not _BROWSER:
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        _BROWSER.extend([browser, playwright])
        atexit.register(_close_browser)
    yield _BROWSER[0]


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=False, type="png")


def axe_violations(page) -> list[dict]:
    """axe-core (from npm, tests/web_node) run in the page: violations of impact serious or critical."""
    # evaluated through the browser's devtools protocol: the page's Content-Security-Policy stays as it is
    page.evaluate((node_modules() / "axe-core" / "axe.min.js").read_text(encoding="utf-8") + "\n;true")
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]
