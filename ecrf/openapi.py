"""Write the app's OpenAPI document to openapi.yaml (`python -m ecrf.openapi`); a test keeps it in step."""

import sys
from pathlib import Path

import yaml

from ecrf.app import create_app
from ecrf.config import Settings

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"


def render() -> str:
    app = create_app(Settings(database_url="sqlite://", jwt_secret="openapi-only", _env_file=None))
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True, width=120)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OPENAPI_FILE
    target.write_text(render())
    print(f"wrote {target}")
