"""Who may call the CDS Hooks door: the JWTs of trusted CDS clients (``--hooks-jwt-issuers``).

CDS Hooks (2.0, "Trusting CDS Clients") has the client sign a JWT for every call,
discovery included, sent as ``Authorization: Bearer``. A token is accepted only when
all of these hold, each refusal counted by its kind (:data:`REFUSALS`) and answered 401:

* the signature is asymmetric, ES384 or RS384 — the algorithms the spec recommends;
  ``none`` and every HMAC are refused before anything else is read (a symmetric key
  would be a shared secret, which the spec forbids);
* ``iss`` is on the allow-list, and one of *that issuer's* public keys (``kid``
  chosen from its JWKS) verifies the signature: keys are never tried across issuers;
* ``aud`` (a string or a list) names exactly the URL being called,
  ``<--hooks-base-url>/cds-services[/<id>[/feedback]]``, so a token minted for another
  service or endpoint is worthless here;
* ``exp``, ``iat`` and ``jti`` are present; ``exp`` is in the future and at most
  :data:`MAX_LIFETIME_S` away (clients sign a token per call; a long-lived one is a
  replayable credential), ``iat`` not in the future (both with :data:`LEEWAY_S` for
  clock skew);
* the ``jti`` was not seen before from that issuer while its token is valid;
* ``tenant``, when the issuer's entry lists ``tenants``, is one of them.

The token itself is never logged or echoed; refusals say which rule failed, which is
what the client's integrator needs and tells an attacker nothing the spec does not.

The replay memory is per process: with ``cds serve --workers N`` a replay that the
kernel hands to another worker is not caught there. The lifetime cap bounds the
window. The issuers file is re-read on SIGHUP (refused whole on error, the old one
staying in force), so keys rotate without a restart.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

ALGORITHMS = ("ES384", "RS384")
LEEWAY_S = 60.0
MAX_LIFETIME_S = 300.0
# Replay memory: at most this many live jti's per process (oldest, i.e. soonest to
# expire, dropped first when full); with the lifetime cap that is ~300 calls/s.
MAX_REMEMBERED_JTIS = 100_000
MAX_CLAIM_CHARS = 128

# Every refusal kind, a closed set: the label of cds_hooks_jwt_refused_total.
REFUSALS = (
    "missing",
    "malformed",
    "algorithm",
    "issuer",
    "signature",
    "audience",
    "expired",
    "lifetime",
    "claims",
    "replayed",
    "tenant",
)


class JwtRefused(Exception):
    """401: ``kind`` is one of :data:`REFUSALS`; the message is for the client."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Caller(NamedTuple):
    """A verified CDS client."""

    issuer: str
    tenant: str | None


class _Key(NamedTuple):
    kid: str | None  # None: a PEM key, tried whatever kid the token names
    algorithm: str
    key: Any


class _Issuer(NamedTuple):
    iss: str
    keys: tuple[_Key, ...]
    tenants: frozenset[str] | None  # None: any tenant


def _algorithm_of(key: Any, where: str) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp384r1":
            raise ValueError(f"{where}: an EC key must be on P-384 for ES384")
        return "ES384"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"{where}: an RSA key must have at least 2048 bits")
        return "RS384"
    raise ValueError(f"{where}: only EC P-384 (ES384) and RSA (RS384) public keys are allowed")


def _jwks_keys(jwks: Any, where: str) -> list[_Key]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f'{where}: expected a JWK Set {{"keys": [...]}}')
    keys = []
    for i, jwk in enumerate(jwks["keys"]):
        at = f"{where}.keys[{i}]"
        if not isinstance(jwk, dict):
            raise ValueError(f"{at}: expected a JWK object")
        if jwk.get("kty") not in ("EC", "RSA"):
            raise ValueError(f"{at}: kty must be EC or RSA (symmetric keys are not allowed)")
        if "d" in jwk or "p" in jwk:
            raise ValueError(f"{at}: a private key; give the client's public key only")
        if jwk.get("use", "sig") != "sig":
            continue  # an encryption key of the same set: not for verifying signatures
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            raise ValueError(f"{at}: not a usable public key ({e})") from None
        algorithm = _algorithm_of(key, at)
        if jwk.get("alg", algorithm) != algorithm:
            raise ValueError(f"{at}: alg must be ES384 or RS384 and fit the key")
        kid = jwk.get("kid")
        keys.append(_Key(kid if isinstance(kid, str) else None, algorithm, key))
    return keys


def _read_json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{where} {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{where} {path}: not JSON ({e})") from None


def load_issuers(path: str | os.PathLike[str]) -> dict[str, _Issuer]:
    """The issuers file, or ValueError naming the file and the entry at fault.

    ``{"issuers": [{"iss": URI, "jwks": {...} | "jwks_file": PATH |
    "public_key_files": [PEM PATH, ...], "tenants": [ID, ...]}]}``; paths are relative
    to the file. At least one key per issuer.
    """
    base = Path(path)
    doc = _read_json(base, "--hooks-jwt-issuers")
    entries = doc.get("issuers") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'--hooks-jwt-issuers {path}: expected {{"issuers": [...]}}, not empty')
    issuers: dict[str, _Issuer] = {}
    for i, entry in enumerate(entries):
        where = f"--hooks-jwt-issuers {path}: issuers[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str) or not entry["iss"]:
            raise ValueError(f"{where}.iss: required")
        unknown = set(entry) - {"iss", "jwks", "jwks_file", "public_key_files", "tenants", "notes"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        iss = entry["iss"]
        if iss in issuers:
            raise ValueError(f"{where}.iss: {iss!r} listed twice")
        keys: list[_Key] = []
        if "jwks" in entry:
            keys += _jwks_keys(entry["jwks"], f"{where}.jwks")
        if "jwks_file" in entry:
            jwks_path = base.parent / str(entry["jwks_file"])
            keys += _jwks_keys(_read_json(jwks_path, f"{where}.jwks_file"), f"{where}.jwks_file")
        for k, pem in enumerate(entry.get("public_key_files", [])):
            pem_path = base.parent / str(pem)
            at = f"{where}.public_key_files[{k}]"
            try:
                key = load_pem_public_key(pem_path.read_bytes())
            except OSError as e:
                raise ValueError(f"{at} {pem_path}: {e.strerror or e}") from None
            except ValueError:
                raise ValueError(f"{at} {pem_path}: not a PEM public key") from None
            keys.append(_Key(None, _algorithm_of(key, at), key))
        if not keys:
            raise ValueError(f"{where}: no signing key (jwks, jwks_file or public_key_files)")
        tenants = entry.get("tenants")
        if tenants is not None and (
            not isinstance(tenants, list) or not all(isinstance(t, str) and t for t in tenants)
        ):
            raise ValueError(f"{where}.tenants: expected a list of institution ids")
        issuers[iss] = _Issuer(iss, tuple(keys), None if tenants is None else frozenset(tenants))
    return issuers


class JwtVerifier:
    """Verifies the bearer JWT of one call; remembers the jti's it accepted."""

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._path = path
        self._clock = clock
        self._issuers = load_issuers(path)
        # (iss, jti) -> exp, in arrival order: tokens live a few minutes, so arrival
        # order is nearly expiry order and the front is what expires first.
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def reload(self) -> None:
        """SIGHUP: the issuers file again; ValueError keeps the issuers in force."""
        self._issuers = load_issuers(self._path)

    def verify(self, authorization: str | None, audience: str) -> Caller:
        """The caller of a request with this ``Authorization`` header, or JwtRefused."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise JwtRefused("missing", "Bearer <JWT> required")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise JwtRefused("malformed", "the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise JwtRefused("algorithm", f"alg {algorithm!r} not allowed: ES384 or RS384 only")
        iss = unverified.get("iss") if isinstance(unverified, dict) else None
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise JwtRefused("issuer", "iss is not a trusted CDS client")
        claims = self._verified_claims(token, header, algorithm, issuer, audience)
        return self._accepted(issuer, claims)

    def _verified_claims(
        self, token: str, header: dict[str, Any], algorithm: str, issuer: _Issuer, audience: str
    ) -> dict[str, Any]:
        kid = header.get("kid")
        keys = [
            k for k in issuer.keys if k.algorithm == algorithm and (k.kid is None or k.kid == kid)
        ]
        now = self._clock()
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    audience=audience,
                    issuer=issuer.iss,
                    leeway=LEEWAY_S,
                    options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_iat": True},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise JwtRefused("expired", "the token has expired (exp)") from None
            except jwt.InvalidAudienceError:
                raise JwtRefused("audience", f"aud must be {audience}") from None
            except jwt.ImmatureSignatureError:
                raise JwtRefused("lifetime", "iat or nbf is in the future") from None
            except jwt.MissingRequiredClaimError as e:
                raise JwtRefused("claims", f"{e.claim}: required") from None
            except jwt.PyJWTError as e:
                raise JwtRefused("claims", f"invalid claims ({type(e).__name__})") from None
            if claims["exp"] > now + MAX_LIFETIME_S + LEEWAY_S:
                raise JwtRefused(
                    "lifetime", f"exp is more than {MAX_LIFETIME_S:.0f} s ahead: sign per call"
                )
            return claims
        raise JwtRefused("signature", "no key of this issuer verifies the signature (kid, alg)")

    def _accepted(self, issuer: _Issuer, claims: dict[str, Any]) -> Caller:
        jti = claims["jti"]
        tenant = claims.get("tenant")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            raise JwtRefused("claims", "jti: a string of 1 to 256 characters")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise JwtRefused("claims", "tenant: a non-empty string when present")
        if tenant is not None and len(tenant) > MAX_CLAIM_CHARS:
            raise JwtRefused("claims", f"tenant: longer than {MAX_CLAIM_CHARS} characters")
        if issuer.tenants is not None and tenant is not None and tenant not in issuer.tenants:
            raise JwtRefused("tenant", "tenant is not one this issuer may speak for")
        now = self._clock()
        seen = self._seen
        while seen and next(iter(seen.values())) < now - LEEWAY_S:
            seen.popitem(last=False)
        key = (issuer.iss, jti)
        expires = seen.get(key)
        if expires is not None and expires >= now - LEEWAY_S:
            raise JwtRefused("replayed", "jti already used: sign a new token for every call")
        if len(seen) >= MAX_REMEMBERED_JTIS:
            seen.popitem(last=False)
        seen[key] = float(claims["exp"])
        return Caller(issuer.iss, tenant)
