"""Servers for tests and benches: the app in a thread of this process, or `ecrf serve` in a subprocess (and
waiting for one to answer)."""

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ecrf.config import Settings
from testkit.net import free_port

ROOT = Path(__file__).resolve().parent.parent  # the checkout, whose `ecrf` a served subprocess runs


def wait_until_answering(
    url: str, process: subprocess.Popen, *, seconds: float = 60, log: Callable[[], str] = lambda: "", pause: float = 0.1
) -> None:
    """Until GET `url` answers 200; RuntimeError with the log's tail if the process serving it exits first
    or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server of {url} exited with {process.returncode}: {log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {seconds:.0f} s: {log()}")
        time.sleep(pause)


def wait_until_healthy(base_url: str, process: subprocess.Popen, **waiting: Any) -> None:
    """Until `ecrf serve` at `base_url` answers GET /healthz with 200 (see wait_until_answering)."""
    wait_until_answering(f"{base_url}/healthz", process, **waiting)


@contextmanager
def serving_in_thread(app: Any, *, seconds: float = 30) -> Iterator[str]:
    """`app` served by uvicorn on a free port, in a thread of this process: its base URL, stopped afterwards."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class ServerLog:
    """Where a served process writes its log: a file, read only when the server fails to start. A pipe
    nobody reads would fill after a few hundred request-log lines and then block the server."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()

    def tail(self, size: int = 2000) -> str:
        self.file.seek(0)
        return self.file.read().decode(errors="replace")[-size:]


class ServeProcess:
    """`ecrf serve` on a free port of 127.0.0.1, in a subprocess on `database_url`, with a fresh JWT secret;
    `settings` are more ECRF_* variables (`export_dir="..."` is ECRF_EXPORT_DIR)."""

    def __init__(self, database_url: str, *, cwd: Path = ROOT, stop_seconds: float = 30, **settings: str):
        self.secret = secrets.token_urlsafe(32)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(database_url=database_url, jwt_secret=self.secret, _env_file=None)
        self.env = {
            **os.environ,
            "ECRF_DATABASE_URL": database_url,
            "ECRF_JWT_SECRET": self.secret,
            "PYTHONWARNINGS": "ignore",
            **{f"ECRF_{name.upper()}": str(value) for name, value in settings.items()},
        }
        self.cwd, self.stop_seconds = cwd, stop_seconds
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServeProcess":
        self.log = ServerLog()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ecrf.cli", "serve", "--port", str(self.port)],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.file,
        )
        try:
            wait_until_healthy(self.url, self.process, log=self.log.tail)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def memory(self) -> tuple[int, int]:
        """(current, peak) resident bytes of the server process."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
