"""CDS clients as a test plays them: a key pair each, an issuers file, signed JWTs.

What an EMR does before calling a CDS Hooks service: it has a private key, publishes
the public half (here as a JWKS file or a PEM file listed in ``--hooks-jwt-issuers``)
and signs a fresh JWT for every call.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class CdsClient:
    def __init__(self, iss: str = "https://emr.hospital.example/", alg: str = "ES384") -> None:
        self.iss = iss
        self.alg = alg
        self.kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg == "ES384":
            self.private_key: Any = ec.generate_private_key(ec.SECP384R1())
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        algorithm = (
            jwt.algorithms.ECAlgorithm if self.alg == "ES384" else jwt.algorithms.RSAAlgorithm
        )
        public = json.loads(algorithm.to_jwk(self.private_key.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, aud: str | list[str], **claims: Any) -> str:
        """A JWT for one call; ``claims`` override or (with None) remove the defaults."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.iss,
            "aud": aud,
            "iat": now,
            "exp": now + 120,
            "jti": str(uuid.uuid4()),
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            payload, self.private_key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"}
        )

    def bearer(self, aud: str | list[str], **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(aud, **claims)}"}


def issuers_file(
    directory: Path, *clients: CdsClient, tenants: dict[str, list[str]] | None = None
) -> Path:
    """``--hooks-jwt-issuers``: ES384 clients by JWKS file, RS384 ones by PEM file."""
    entries = []
    for i, client in enumerate(clients):
        entry: dict[str, Any] = {"iss": client.iss}
        if client.alg == "ES384":
            name = f"client{i}.jwks.json"
            (directory / name).write_text(json.dumps({"keys": [client.jwk()]}))
            entry["jwks_file"] = name
        else:
            name = f"client{i}.pem"
            (directory / name).write_bytes(client.public_pem())
            entry["public_key_files"] = [name]
        if tenants and client.iss in tenants:
            entry["tenants"] = tenants[client.iss]
        entries.append(entry)
    path = directory / "cds-clients.json"
    path.write_text(json.dumps({"issuers": entries}))
    return path
