"""This server's own signing keys for the access tokens it issues (SMART Backend Services).

ECRF_SMART_KEY_FILE holds a JWKS of private keys (ES256, each with a `kid`); the first key signs, every
key verifies, so a key is rotated by putting the new one first and removing the old one once the tokens
it signed have expired (minutes). When unset, one key is generated on first use into `.ecrf-smart-key.json`
(mode 0600) next to the SQLite file, like the other generated secrets. Only public parts ever leave
(GET /auth/jwks).
"""

import json
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk

ALGORITHM = "ES256"
PUBLIC_MEMBERS = ("kty", "crv", "x", "y", "n", "e", "kid", "alg", "use")


@dataclass(frozen=True)
class ServerKeys:
    keys: tuple[dict[str, Any], ...]  # private JWKs, the signing one first

    @property
    def signing(self) -> dict[str, Any]:
        return self.keys[0]

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(key["kid"] for key in self.keys)

    def public_jwks(self) -> dict[str, Any]:
        return {
            "keys": [{name: key[name] for name in PUBLIC_MEMBERS if name in key} | {"use": "sig"} for key in self.keys]
        }

    def verifying_key(self, kid: str) -> Any:
        key = next(key for key in self.keys if key["kid"] == kid)
        public = {name: key[name] for name in PUBLIC_MEMBERS if name in key}
        return jwk.construct(public, algorithm=key.get("alg", ALGORITHM))


def key_file(settings: Any) -> Path:
    if settings.smart_key_file is not None:
        return Path(settings.smart_key_file)
    return settings.secret_file.parent / ".ecrf-smart-key.json"


def load(settings: Any) -> ServerKeys:
    path = key_file(settings)
    if not path.exists() and settings.smart_key_file is None:
        _generate(path)
    return _read(path.resolve(), path.stat().st_mtime)


@lru_cache(maxsize=4)
def _read(path: Path, _mtime: float) -> ServerKeys:
    keys = json.loads(path.read_text())["keys"]
    if not keys or any("kid" not in key or "d" not in key or key.get("kty") != "EC" for key in keys):
        raise ValueError(f"{path}: a JWKS of EC private keys (P-256, ES256), each with a kid, is expected")
    return ServerKeys(tuple(keys))


def generate_jwk() -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.private_numbers()

    def b64(value: int) -> str:
        import base64

        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    return {
        "kty": "EC",
        "crv": "P-256",
        "alg": ALGORITHM,
        "kid": uuid.uuid4().hex,
        "x": b64(numbers.public_numbers.x),
        "y": b64(numbers.public_numbers.y),
        "d": b64(numbers.private_value),
    }


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another instance wrote it first
        return
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"keys": [generate_jwk()]}, handle)
