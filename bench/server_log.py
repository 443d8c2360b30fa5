"""Where a bench's `ecrf serve` writes its log: a file, read only when the server fails to start. A pipe
nobody reads would fill after a few hundred request-log lines and then block the server."""
import tempfile


class ServerLog:
    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()

    def tail(self, size: int = 2000) -> str:
        self.file.seek(0)
        return self.file.read().decode(errors="replace")[-size:]
