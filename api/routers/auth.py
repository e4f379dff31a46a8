"""Login, token refresh and logout: ``/api/v1/auth``.

A refused login, refresh or logout is an ``auth.service.AuthError``, answered
with its status and headers by ``api.errors``: 401, 429 (throttled, per username
and per client address) or 503 (a revocation the database did not record).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from api.deps import AuthServiceDep, PrincipalDep, SessionDep
from api.errors import BadRequest, error_responses
from api.schemas.inputs import Username
from auth.service import TokenPair

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginRequest(BaseModel):
    username: Username
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1)


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(None, description="Also end the session this refresh token belongs to.")


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            token_type=pair.token_type,
            expires_in=pair.expires_in,
        )


class PrincipalResponse(BaseModel):
    user_id: int
    username: str
    role: str
    tier: str
    via: str
    api_key_id: int | None = None
    system_scope: list[str] | None = None


_LOGIN_SCHEMA = LoginRequest.model_json_schema()


async def _login_body(request: Request) -> LoginRequest:
    """JSON, or the OAuth2 password form that the /docs "Authorize" button sends."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return LoginRequest.model_validate({k: form.get(k) for k in ("username", "password")})
        return LoginRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from error


@router.post(
    "/token",
    response_model=TokenResponse,
    summary="Log in with username and password",
    responses=error_responses(401, 413, 422, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _LOGIN_SCHEMA},
                "application/x-www-form-urlencoded": {"schema": _LOGIN_SCHEMA},
            },
        }
    },
)
async def login(request: Request, session: SessionDep, auth: AuthServiceDep) -> TokenResponse:
    body = await _login_body(request)
    client = request.client.host if request.client else None
    return TokenResponse.of(await auth.login(session, body.username, body.password, client=client))


@router.post(
    "/refresh",
    response_model=TokenResponse,
    summary="Swap a refresh token for a new token pair",
    # 503: a reused refresh token's session revocation that the database did not record.
    responses=error_responses(401, 413, 422, 503),
)
async def refresh(body: RefreshRequest, session: SessionDep, auth: AuthServiceDep) -> TokenResponse:
    return TokenResponse.of(await auth.refresh(session, body.refresh_token))


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this session",
    # 400: called with an API key; 503: the logout could not be recorded, nothing was revoked.
    responses=error_responses(400, 401, 413, 422, 503),
)
async def logout(
    principal: PrincipalDep, session: SessionDep, auth: AuthServiceDep, body: LogoutRequest | None = None
) -> Response:
    if principal.token is None:
        raise BadRequest("logout needs a bearer token; API keys are revoked with 'hdx keys revoke'")
    await auth.logout(session, principal.token, body.refresh_token if body else None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me", response_model=PrincipalResponse, summary="Who the credentials belong to", responses=error_responses(401)
)
async def me(principal: PrincipalDep) -> PrincipalResponse:
    return PrincipalResponse(
        user_id=principal.user_id,
        username=principal.username,
        role=principal.role,
        tier=principal.tier,
        via=principal.via,
        api_key_id=principal.api_key_id,
        system_scope=sorted(principal.system_scope) if principal.system_scope is not None else None,
    )
