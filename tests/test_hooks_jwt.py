"""JWT verification of CDS clients, rule by rule (cds/security/hooks_jwt.py)."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds.security.hooks_jwt import MAX_LIFETIME_S, REFUSALS, JwtRefused, JwtVerifier
from tests.support.cds_clients import CdsClient, issuers_file
from tests.support.fuzz import CI_PROFILE

AUD = "https://cds.hospital.example/cds-services/cds-order-sign"


@pytest.fixture
def clients(tmp_path):
    es, rs = (
        CdsClient("https://emr-a.example/", "ES384"),
        CdsClient("https://emr-b.example/", "RS384"),
    )
    path = issuers_file(tmp_path, es, rs, tenants={"https://emr-b.example/": ["FJ-SL"]})
    return es, rs, JwtVerifier(path)


def refusal(verifier, header, aud=AUD):
    with pytest.raises(JwtRefused) as refused:
        verifier.verify(header, aud)
    assert refused.value.kind in REFUSALS
    return refused.value.kind


def test_es384_and_rs384_tokens_of_trusted_issuers_are_accepted_with_their_tenant(clients):
    es, rs, verifier = clients
    assert verifier.verify(f"Bearer {es.token(AUD)}", AUD) == (es.iss, None)
    assert verifier.verify(f"Bearer {rs.token([AUD], tenant='FJ-SL')}", AUD) == (rs.iss, "FJ-SL")


def test_a_token_for_another_endpoint_of_the_same_service_is_refused(clients):
    es, _, verifier = clients
    assert refusal(verifier, f"Bearer {es.token(AUD + '/feedback')}") == "audience"
    assert refusal(verifier, f"Bearer {es.token('https://other.example/cds-services')}") == (
        "audience"
    )


def test_an_expired_token_is_refused(clients):
    es, _, verifier = clients
    past = int(time.time()) - 3600
    assert refusal(verifier, f"Bearer {es.token(AUD, iat=past - 60, exp=past)}") == "expired"


def test_a_token_valid_for_longer_than_one_call_needs_is_refused(clients):
    es, _, verifier = clients
    far = int(time.time() + MAX_LIFETIME_S + 3600)
    assert refusal(verifier, f"Bearer {es.token(AUD, exp=far)}") == "lifetime"


def test_a_replayed_jti_is_refused_and_a_fresh_one_accepted(clients):
    es, _, verifier = clients
    token = es.token(AUD)
    verifier.verify(f"Bearer {token}", AUD)
    assert refusal(verifier, f"Bearer {token}") == "replayed"
    verifier.verify(f"Bearer {es.token(AUD)}", AUD)


def test_hmac_and_none_are_refused_even_with_a_trusted_iss(clients):
    es, _, verifier = clients
    claims = {"iss": es.iss, "aud": AUD, "iat": int(time.time()), "exp": int(time.time()) + 60}
    hs256 = jwt.encode({**claims, "jti": "j1"}, "a shared secret of thirty-two bytes", "HS256")
    unsigned = jwt.encode({**claims, "jti": "j2"}, None, algorithm="none")
    assert refusal(verifier, f"Bearer {hs256}") == "algorithm"
    assert refusal(verifier, f"Bearer {unsigned}") == "algorithm"


def test_an_unknown_issuer_is_refused(clients):
    stranger = CdsClient("https://stranger.example/")
    assert refusal(clients[2], f"Bearer {stranger.token(AUD)}") == "issuer"


def test_a_trusted_iss_signed_with_someone_elses_key_is_refused(clients):
    es, _, verifier = clients
    impostor = CdsClient(es.iss)
    impostor.kid = es.kid
    assert refusal(verifier, f"Bearer {impostor.token(AUD)}") == "signature"


def test_required_claims_and_the_header_are_checked(clients):
    es, _, verifier = clients
    assert refusal(verifier, None) == "missing"
    assert refusal(verifier, "Basic dXNlcjpwYXNz") == "missing"
    assert refusal(verifier, "Bearer not.a.jwt") == "malformed"
    assert refusal(verifier, f"Bearer {es.token(AUD, jti=None)}") == "claims"
    assert refusal(verifier, f"Bearer {es.token(AUD, iat=None)}") == "claims"
    future = int(time.time()) + 3600
    assert refusal(verifier, f"Bearer {es.token(AUD, iat=future, exp=future + 60)}") == "lifetime"


def test_a_tenant_outside_the_issuers_list_is_refused(clients):
    _, rs, verifier = clients
    assert refusal(verifier, f"Bearer {rs.token(AUD, tenant='FJ-XH')}") == "tenant"


def test_a_bad_issuers_file_is_refused_naming_the_entry_and_reload_keeps_the_old(tmp_path):
    es = CdsClient()
    path = issuers_file(tmp_path, es)
    verifier = JwtVerifier(path)
    shared = {"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}
    path.write_text(json.dumps({"issuers": [{"iss": es.iss, "jwks": {"keys": [shared]}}]}))
    with pytest.raises(ValueError, match=r"issuers\[0\]\.jwks\.keys\[0\]: kty must be EC or RSA"):
        verifier.reload()
    assert verifier.verify(f"Bearer {es.token(AUD)}", AUD).issuer == es.iss


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, r"issuers\[0\]\.iss: required"),
        ({"iss": "x"}, r"issuers\[0\]: no signing key"),
        ({"iss": "x", "jwks_file": "absent.json"}, r"absent\.json: No such file"),
        ({"iss": "x", "jwks": {"keys": []}, "bogus": 1}, r"unknown key 'bogus'"),
        ({"iss": "x", "jwks": {"keys": [{**CdsClient().jwk(), "alg": "ES256"}]}}, "alg must be"),
    ],
)
def test_each_issuers_file_mistake_is_named(tmp_path, entry, message):
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [entry]}))
    with pytest.raises(ValueError, match=message):
        JwtVerifier(path)


def test_a_private_key_or_a_weak_curve_in_the_issuers_file_is_refused(tmp_path):
    client = CdsClient()
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(client.private_key))
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [{"iss": "x", "jwks": {"keys": [private]}}]}))
    with pytest.raises(ValueError, match="a private key"):
        JwtVerifier(path)
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = json.loads(
        jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    )
    path.write_text(json.dumps({"issuers": [{"iss": "x", "jwks": {"keys": [p256]}}]}))
    with pytest.raises(ValueError, match="P-384"):
        JwtVerifier(path)


# -- any token at all: a refusal with its kind, never another exception ------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_CLAIMS = ("iss", "aud", "iat", "exp", "nbf", "jti", "tenant")
_DROP = object()


def signed(client: CdsClient, claims: dict[str, object]) -> str:
    """A token of ``client`` with exactly these claims, of any JSON type: signed as raw
    JSON, since PyJWT's own encoder refuses a claim of the wrong type."""
    payload = json.dumps(claims).encode()
    return jwt.PyJWS().encode(
        payload, client.private_key, algorithm=client.alg, headers={"kid": client.kid}
    )


def test_a_signed_token_with_any_claim_values_is_accepted_or_refused_by_kind(tmp_path):
    """The claims are the client's JSON: any type can arrive in any of them, signed by a
    trusted key, so past the signature check. A wrong type must be a refusal (401),
    not an exception the door would answer 500."""
    es = CdsClient("https://emr-a.example/", "ES384")
    verifier = JwtVerifier(issuers_file(tmp_path, es))

    # one or two claims replaced by any JSON value or dropped, the rest valid: so that
    # each claim's own checks are reached, not only the first one to fail
    change = st.tuples(st.sampled_from(_CLAIMS), st.just(_DROP) | _JSON)

    @settings(settings.get_profile(CI_PROFILE), max_examples=300)
    @given(changes=st.lists(change, min_size=1, max_size=2))
    def one(changes: list[tuple[str, object]]) -> None:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": es.iss, "aud": AUD, "iat": now, "exp": now + 120, "jti": str(uuid.uuid4())
        }  # fmt: skip
        for name, value in changes:
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        try:
            caller = verifier.verify(f"Bearer {signed(es, claims)}", AUD)
        except JwtRefused as refused:
            assert refused.kind in REFUSALS
            return
        assert caller.issuer == es.iss
        assert caller.tenant is None or isinstance(caller.tenant, str)

    one()


def test_a_mangled_token_is_refused_by_kind(tmp_path):
    """Bytes changed, cut or added anywhere in a used token: never accepted again, never
    an exception other than the refusal. (Base64 decoding skips characters outside its
    alphabet, so some variants carry the same signed claims: those are replays.)"""
    es = CdsClient("https://emr-a.example/", "ES384")
    verifier = JwtVerifier(issuers_file(tmp_path, es))
    token = es.token(AUD)
    verifier.verify(f"Bearer {token}", AUD)
    alphabet = st.sampled_from("ABCxyz019-_.=+/ \x00é")

    @settings(settings.get_profile(CI_PROFILE), max_examples=300)
    @given(
        at=st.integers(0, len(token)), cut=st.integers(0, 4), added=st.text(alphabet, max_size=4)
    )
    def one(at: int, cut: int, added: str) -> None:
        mangled = token[:at] + added + token[at + cut :]
        with pytest.raises(JwtRefused) as refused:
            verifier.verify(f"Bearer {mangled}", AUD)
        assert refused.value.kind in REFUSALS

    one()
