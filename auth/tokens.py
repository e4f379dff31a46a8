"""JSON Web Tokens (PyJWT): issuing and strictly verifying access and refresh tokens.

The algorithm is pinned from settings and decoding accepts only that one, so a
token signed with ``alg: none`` or any other algorithm is refused, as is one
missing a required claim or made for another issuer or audience.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import jwt

if TYPE_CHECKING:
    from configs.settings import Settings

TokenType = Literal["access", "refresh"]
# Symmetric only: the signing key is the shared secret from settings. RFC 7518 (3.2)
# asks for a key at least as long as the hash output.
MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
SUPPORTED_ALGORITHMS = tuple(MIN_SECRET_BYTES)
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "type", "role"]
LEEWAY_S = 10


class TokenError(Exception):
    """A token was refused; ``str(error)`` says why, fit for a 401 message."""


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    role: str
    type: TokenType
    jti: str
    family_id: str | None
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: datetime


class TokenCodec:
    def __init__(
        self,
        secret: str,
        *,
        algorithm: str = "HS256",
        issuer: str = "hdx",
        audience: str = "hdx-api",
        access_ttl_s: int = 900,
        refresh_ttl_s: int = 14 * 24 * 3600,
    ) -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"jwt_algorithm must be one of {', '.join(SUPPORTED_ALGORITHMS)}, got {algorithm!r}")
        if len(secret.encode()) < MIN_SECRET_BYTES[algorithm]:
            raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES[algorithm]} bytes for {algorithm}")
        self._secret = secret
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCodec:
        """Raises ValueError when the secret is missing, short or the dev default outside dev_mode."""
        return cls(
            settings.effective_jwt_secret(),
            algorithm=settings.jwt_algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
        )

    def issue(
        self, *, user_id: int, role: str, type: TokenType, family_id: str, now: datetime | None = None
    ) -> IssuedToken:
        now = now or datetime.now(UTC)
        ttl = self.access_ttl_s if type == "access" else self.refresh_ttl_s
        expires_at = now + timedelta(seconds=ttl)
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "role": role,
            "type": type,
            "jti": jti,
            # The login session; on access tokens too, so logout and reuse detection
            # can end a session's access tokens without waiting for them to expire.
            "fam": family_id,
            "iat": now,
            "nbf": now,
            "exp": expires_at,
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=self.algorithm), jti, expires_at)

    def decode(self, token: str, *, expected_type: TokenType) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenError("token has expired") from error
        except jwt.ImmatureSignatureError as error:
            raise TokenError("token is not valid yet") from error
        except jwt.InvalidAudienceError as error:
            raise TokenError(f"token audience is wrong (expected {self.audience!r})") from error
        except jwt.InvalidIssuerError as error:
            raise TokenError(f"token issuer is wrong (expected {self.issuer!r})") from error
        except jwt.InvalidSignatureError as error:
            raise TokenError("token signature is invalid") from error
        except jwt.InvalidAlgorithmError as error:
            raise TokenError(f"token algorithm is not allowed (only {self.algorithm})") from error
        except jwt.MissingRequiredClaimError as error:
            raise TokenError(f"token is missing the {error.claim!r} claim") from error
        except jwt.DecodeError as error:
            raise TokenError("token is malformed") from error
        except jwt.InvalidTokenError as error:
            raise TokenError(f"token is invalid: {error}") from error
        return _claims(claims, expected_type)


def _claims(claims: dict[str, Any], expected_type: TokenType) -> TokenClaims:
    if claims["type"] != expected_type:
        raise TokenError(f"a {claims['type']} token was sent where a {expected_type} token is needed")
    try:
        user_id = int(claims["sub"])
    except ValueError as error:
        raise TokenError("token subject is not a user id") from error
    return TokenClaims(
        user_id=user_id,
        role=str(claims["role"]),
        type=expected_type,
        jti=str(claims["jti"]),
        family_id=claims.get("fam"),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )
