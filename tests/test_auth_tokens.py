from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from auth.tokens import TokenCodec, TokenError
from configs.settings import DEV_JWT_SECRET, Settings

SECRET = "unit-test-secret-0123456789abcdef0123"


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(SECRET, algorithm="HS256", issuer="hdx", audience="hdx-api", access_ttl_s=60, refresh_ttl_s=600)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _payload(codec: TokenCodec, **overrides) -> dict:
    now = datetime.now(UTC)
    claims = {
        "iss": "hdx",
        "aud": "hdx-api",
        "sub": "7",
        "role": "engineer",
        "type": "access",
        "jti": "j1",
        "fam": "f1",
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=1),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_issued_tokens_decode_with_all_claims(codec: TokenCodec) -> None:
    issued = codec.issue(user_id=7, role="engineer", type="access", family_id="fam")
    claims = codec.decode(issued.token, expected_type="access")
    assert (claims.user_id, claims.role, claims.type, claims.jti, claims.family_id) == (
        7,
        "engineer",
        "access",
        issued.jti,
        "fam",
    )
    assert abs(claims.expires_at - issued.expires_at) < timedelta(seconds=1)
    raw = jwt.decode(issued.token, options={"verify_signature": False})
    assert {"exp", "iat", "nbf", "iss", "aud", "sub", "role", "type", "jti", "fam"} <= raw.keys()
    assert jwt.get_unverified_header(issued.token)["alg"] == "HS256"


def test_each_token_has_its_own_jti(codec: TokenCodec) -> None:
    first = codec.issue(user_id=1, role="viewer", type="refresh", family_id="f")
    second = codec.issue(user_id=1, role="viewer", type="refresh", family_id="f")
    assert first.jti != second.jti


def test_refresh_and_access_tokens_are_not_interchangeable(codec: TokenCodec) -> None:
    refresh = codec.issue(user_id=1, role="viewer", type="refresh", family_id="f")
    with pytest.raises(TokenError, match="a refresh token was sent where a access token is needed"):
        codec.decode(refresh.token, expected_type="access")


def test_tampered_signature_is_refused(codec: TokenCodec) -> None:
    token = codec.issue(user_id=1, role="viewer", type="access", family_id="f").token
    header, payload, signature = token.split(".")
    forged_payload = _b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "role": "admin"})
    with pytest.raises(TokenError, match="signature is invalid"):
        codec.decode(f"{header}.{forged_payload}.{signature}", expected_type="access")
    with pytest.raises(TokenError, match="signature is invalid"):
        codec.decode(
            jwt.encode(_payload(codec), "another-secret-0123456789abcdef012", algorithm="HS256"), expected_type="access"
        )


def test_expired_token_is_refused(codec: TokenCodec) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    token = codec.issue(user_id=1, role="viewer", type="access", family_id="f", now=past).token
    with pytest.raises(TokenError, match="token has expired"):
        codec.decode(token, expected_type="access")


def test_wrong_audience_and_issuer_are_refused(codec: TokenCodec) -> None:
    with pytest.raises(TokenError, match="audience is wrong"):
        codec.decode(jwt.encode(_payload(codec, aud="other-api"), SECRET, algorithm="HS256"), expected_type="access")
    with pytest.raises(TokenError, match="issuer is wrong"):
        codec.decode(jwt.encode(_payload(codec, iss="evil"), SECRET, algorithm="HS256"), expected_type="access")


def test_alg_none_is_refused(codec: TokenCodec) -> None:
    claims = jwt.decode(jwt.encode(_payload(codec), SECRET, algorithm="HS256"), options={"verify_signature": False})
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(TokenError, match="algorithm is not allowed"):
        codec.decode(unsigned, expected_type="access")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_other_hmac_algorithm_is_refused_when_hs256_is_pinned(codec: TokenCodec) -> None:
    hs512 = jwt.encode(_payload(codec), SECRET, algorithm="HS512")  # right secret, wrong algorithm
    with pytest.raises(TokenError, match=r"algorithm is not allowed \(only HS256\)"):
        codec.decode(hs512, expected_type="access")


def test_missing_claims_and_garbage_are_refused(codec: TokenCodec) -> None:
    with pytest.raises(TokenError, match="missing the 'jti' claim"):
        codec.decode(jwt.encode(_payload(codec, jti=None), SECRET, algorithm="HS256"), expected_type="access")
    with pytest.raises(TokenError, match="missing the 'nbf' claim"):
        codec.decode(jwt.encode(_payload(codec, nbf=None), SECRET, algorithm="HS256"), expected_type="access")
    with pytest.raises(TokenError, match="malformed"):
        codec.decode("not.a.jwt", expected_type="access")
    with pytest.raises(TokenError, match="not valid yet"):
        future = datetime.now(UTC) + timedelta(hours=1)
        codec.decode(jwt.encode(_payload(codec, nbf=future), SECRET, algorithm="HS256"), expected_type="access")


def test_only_hmac_algorithms_can_be_pinned() -> None:
    with pytest.raises(ValueError, match="jwt_algorithm must be one of"):
        TokenCodec(SECRET, algorithm="none")
    with pytest.raises(ValueError, match="jwt_algorithm must be one of"):
        TokenCodec(SECRET, algorithm="RS256")


def test_secret_must_be_as_long_as_the_hash() -> None:
    with pytest.raises(ValueError, match="at least 64 bytes for HS512"):
        TokenCodec(SECRET, algorithm="HS512")


@pytest.mark.parametrize(
    "secret, dev_mode, error",
    [
        ("", False, "missing or is the development default"),
        (DEV_JWT_SECRET, False, "missing or is the development default"),
        ("too-short", False, "at least 32 bytes"),
        ("too-short", True, "at least 32 bytes"),
    ],
)
def test_unfit_secrets_are_refused(tmp_path, secret: str, dev_mode: bool, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        TokenCodec.from_settings(Settings(home=tmp_path, jwt_secret=secret, dev_mode=dev_mode))


def test_dev_mode_allows_the_development_secret(tmp_path) -> None:
    dev = TokenCodec.from_settings(Settings(home=tmp_path, jwt_secret="", dev_mode=True))
    token = dev.issue(user_id=1, role="viewer", type="access", family_id="f").token
    assert jwt.decode(token, DEV_JWT_SECRET, algorithms=["HS256"], audience="hdx-api")["sub"] == "1"
    strong = TokenCodec.from_settings(Settings(home=tmp_path, jwt_secret=SECRET * 2, jwt_algorithm="HS512"))
    assert (
        jwt.get_unverified_header(strong.issue(user_id=1, role="viewer", type="access", family_id="f").token)["alg"]
        == "HS512"
    )
