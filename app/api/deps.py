"""What routes depend on, as Annotated aliases. Everything comes from the Services the lifespan
built (app.api.services), read here and nowhere else.

The cheap, non-blocking dependencies are `async def`: FastAPI runs a plain `def` dependency in the
thread pool, and four such round trips per request cost /predict ~15% of its throughput (bench/).
Those that touch the database stay plain `def`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.openapi.models import OAuth2 as OAuth2Model
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlowPassword, OAuthFlows
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from app.api.services import Services
from app.core.config import Settings
from app.core.credentials import CLIENT_SUBJECT, KEY_PREFIX, ExpiredKey, InvalidKey
from app.core.lockout import Throttle
from app.core.oidc import OidcRefused, OidcVerifier, issuer_token
from app.core.revocation import Revocation, StoreUnreadable
from app.core.security import SCOPES, ExpiredToken, InvalidToken, TokenClaims, decode_access_token
from app.db import crud, service_clients
from app.db.jobs import JobQueue
from app.db.models import User
from app.db.prediction_log import PredictionLogStore
from app.db.session import Database
from app.observability.audit import auth_failed
from app.observability.metrics import AUTH, REVOCATIONS
from app.observability.role_outcomes import RoleOutcomes
from app.serving.champion_alias import ChampionAlias
from app.serving.predictor import Predictor
from app.serving.state import ServingState

_BEARER = {"WWW-Authenticate": "Bearer"}
PREDICT_SCOPES = SecurityScopes(scopes=["predict"])
NO_SCOPES = SecurityScopes(scopes=[])


def services(request: Request) -> Services:
    """The app's collaborators; the routes that solve no dependency (the hot ones) call this."""
    found: Services = request.app.state.services
    return found


def known_features(request: Request) -> set[str]:
    """The served model's feature names (none before start-up or without a model): an error
    handler's view, which may run before the lifespan did."""
    found: Services | None = getattr(request.app.state, "services", None)
    current = found.serving.current if found is not None else None
    return set(current.metadata.feature_names) if current is not None else set()


async def get_services(request: Request) -> Services:
    return services(request)


async def get_settings_dep(request: Request) -> Settings:
    return services(request).settings


async def get_database(request: Request) -> Database:
    return services(request).database


async def get_serving(request: Request) -> ServingState:
    return services(request).serving


async def get_throttle(request: Request) -> Throttle:
    return services(request).throttle


async def get_jobs(request: Request) -> JobQueue:
    return services(request).jobs


async def get_predictions(request: Request) -> PredictionLogStore:
    return services(request).predictions


async def get_champion_alias(request: Request) -> ChampionAlias:
    return services(request).champion_alias


async def limit_client(request: Request) -> None:
    """/token's limit per client address (RATE_LIMIT_TOKEN), before any password is checked."""
    await services(request).rate_limits.check_client(request)


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ServingDep = Annotated[ServingState, Depends(get_serving)]
ThrottleDep = Annotated[Throttle, Depends(get_throttle)]
JobsDep = Annotated[JobQueue, Depends(get_jobs)]
PredictionsDep = Annotated[PredictionLogStore, Depends(get_predictions)]
ChampionAliasDep = Annotated[ChampionAlias, Depends(get_champion_alias)]


def get_session(database: DatabaseDep) -> Iterator[Session]:
    with database.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def serving_predictor(request: Request) -> Predictor:
    """The model serving now, or a 503 saying why there is none."""
    # One read of the reference: this request uses this model even if a reload swaps it meanwhile.
    serving = services(request).serving
    predictor = serving.current
    if predictor is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model not loaded: {serving.error}")
    return predictor


def answering(
    request: Request, champion: Predictor, user: str, timed: bool = True
) -> tuple[Predictor, RoleOutcomes | None]:
    """The version answering this scoring request, the champion or, for its share, the canary; and,
    while a canary runs, the window its outcome counts in (the middleware adds it, with its latency
    unless `timed` is False: a CSV file's time is its size's)."""
    canary = services(request).serving.canary
    if canary is None:
        return champion, None
    predictor, outcomes = canary.choose(champion, user, request.headers)
    request.state.answered_by = outcomes.answered if timed else outcomes.answered_untimed
    return predictor, outcomes


async def get_predictor(request: Request) -> Predictor:
    # Not ServingDep: each dependency FastAPI solves costs the hot path.
    return serving_predictor(request)


PredictorDep = Annotated[Predictor, Depends(get_predictor)]

API_KEY_HEADER = "x-api-key"


class _BearerOrApiKey(OAuth2PasswordBearer):
    """OAuth2PasswordBearer (its OpenAPI name stays), with the client-credentials flow offered beside
    the password flow in Swagger UI's Authorize dialog, and an API key taken from X-API-Key too."""

    def __init__(self) -> None:
        super().__init__(tokenUrl="token", scopes=SCOPES, scheme_name="OAuth2PasswordBearer")
        self.model = OAuth2Model(
            flows=OAuthFlows(
                password=OAuthFlowPassword(tokenUrl="token", scopes=SCOPES),
                clientCredentials=OAuthFlowClientCredentials(tokenUrl="token", scopes=SCOPES),
            )
        )

    async def __call__(self, request: HTTPConnection) -> str | None:
        return request.headers.get(API_KEY_HEADER) or await super().__call__(request)


oauth2_scheme = _BearerOrApiKey()
TokenDep = Annotated[str, Depends(oauth2_scheme)]


async def current_claims(security_scopes: SecurityScopes, token: TokenDep, request: Request) -> TokenClaims:
    """The verified token: no database access, the token carries the scopes (an API key this replica
    has not seen lately is read first, in a thread)."""
    await read_key_off_loop(request, token)
    return _verified_claims(token, security_scopes, request)


async def prediction_claims(security_scopes: SecurityScopes, request: Request) -> TokenClaims:
    """current_claims for the prediction routes, as one dependency: FastAPI's solving of each
    dependency costs more than a one-row prediction. The routes declare the OAuth2 requirement in
    their OpenAPI themselves (PREDICT_SECURITY)."""
    await read_key_off_loop(request)
    return bearer_claims(request, security_scopes)


async def read_key_off_loop(request: Request, credential: str | None = None) -> None:
    """An API key missing from this replica's cache, read from the database in a thread, so that the
    synchronous check after it (bearer_claims, _verified_claims) finds it cached and never blocks the
    event loop on the database. A JWT, or a cached key, costs a prefix test."""
    credential = credential or request.headers.get(API_KEY_HEADER) or request.headers.get("authorization", "")
    credential = credential.removeprefix("Bearer ").removeprefix("bearer ")
    if not credential.startswith(KEY_PREFIX):
        return
    api_keys = services(request).api_keys
    key_id = api_keys.to_read(credential)
    if key_id is not None:
        await anyio.to_thread.run_sync(api_keys.read, key_id)


def bearer_claims(request: Request, security_scopes: SecurityScopes = PREDICT_SCOPES) -> TokenClaims:
    """The verified token of the request's Authorization header, which must grant these scopes:
    current_claims without FastAPI (for /predict, which solves no dependency at all). It reads the
    bearer token (or X-API-Key) as oauth2_scheme does, and refuses as current_claims does."""
    api_key = request.headers.get(API_KEY_HEADER)
    if api_key:
        return _verified_claims(api_key, security_scopes, request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Not authenticated", headers=_BEARER)
    return _verified_claims(token, security_scopes, request)


def revoke(request: Request, revocation: Revocation, not_done: str) -> None:
    """Write a revocation to the shared store (and this replica's list), counted by kind; a 503 that
    says `not_done` when the store does not answer."""
    revocations = services(request).revocations
    try:
        revocations.revoke(revocation)
    except StoreUnreadable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{not_done} (revocation store: {exc})"
        ) from None
    REVOCATIONS.labels(kind=revocation.kind).inc()


# The OpenAPI security requirement prediction_claims stands for (what Security(oauth2_scheme) adds).
PREDICT_SECURITY: dict[str, Any] = {"security": [{"OAuth2PasswordBearer": ["predict"]}]}
# A bearer token of any scope (POST /logout).
ANY_SCOPE_SECURITY: dict[str, Any] = {"security": [{"OAuth2PasswordBearer": []}]}


def _ours_or_the_issuers(token: str, secret: str, oidc: OidcVerifier | None, request: Request) -> TokenClaims:
    """Our token (decode_access_token, which raises InvalidToken), or, when OIDC_ISSUER is set and
    the token's header is not ours, the external issuer's (app.core.oidc), its refusals counted by
    their own reasons (oidc_alg, oidc_signature, ...)."""
    if oidc is None or not issuer_token(token):
        return decode_access_token(token, secret=secret)
    try:
        claims = oidc.verify(token)
    except OidcRefused as exc:
        auth_failed(exc.reason, request, str(exc), method="oidc")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Could not validate credentials", headers=_BEARER
        ) from None
    AUTH.labels(method="oidc", result="ok").inc()
    return claims


def _verified_claims(token: str, security_scopes: SecurityScopes, request: Request) -> TokenClaims:
    found = services(request)  # not SettingsDep: one dependency less per request
    settings = found.settings
    try:
        if token.startswith(KEY_PREFIX):
            claims = _api_key_claims(token, found, request)
        else:
            claims = _ours_or_the_issuers(token, settings.secret_key.get_secret_value(), found.oidc, request)
    except InvalidToken as exc:
        # Quiet to the caller (one 401 whatever the cause), loud in metrics and logs.
        auth_failed(_refusal(exc), request, str(exc))
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Could not validate credentials", headers=_BEARER
        ) from None
    request.state.user = claims.sub
    revocations = found.revocations
    if revocations.revoked(claims):
        auth_failed("revoked", request, "a revoked token: logged out, a reused refresh, a withdrawn user")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Could not validate credentials", headers=_BEARER)
    unverifiable = revocations.unverifiable(claims)
    if unverifiable:
        auth_failed("unverifiable", request, unverifiable)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, unverifiable, headers={"Retry-After": "5"})
    missing = [s for s in security_scopes.scopes if s not in claims.scopes]
    if missing:
        auth_failed("insufficient_scope", request, f"needs {' '.join(missing)}")
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Not enough permissions: this needs the scope {' '.join(missing)}",
            headers={"WWW-Authenticate": f'Bearer scope="{security_scopes.scope_str}"'},
        )
    return claims


def _refusal(exc: InvalidToken) -> str:
    if isinstance(exc, ExpiredToken | ExpiredKey):
        return "expired"
    return "invalid_key" if isinstance(exc, InvalidKey) else "invalid_token"


def _api_key_claims(key: str, found: Services, request: Request) -> TokenClaims:
    """An API key's claims (sub `key:<id>`, so rate limits count per key), from this replica's cache
    of verified keys; its owner kept on the request for the logs. InvalidKey when refused."""
    try:
        verified = found.api_keys.verify(key)
    except InvalidKey:
        AUTH.labels(method="api_key", result="refused").inc()
        raise
    request.state.key_owner = verified.record.owner
    revoked = found.revocations.revoked(verified.claims)  # checked again below, with the tokens'
    AUTH.labels(method="api_key", result="refused" if revoked else "ok").inc()
    return verified.claims


ClaimsDep = Annotated[TokenClaims, Security(current_claims)]
AdminClaimsDep = Annotated[TokenClaims, Security(current_claims, scopes=["admin"])]


def current_admin(claims: AdminClaimsDep, session: SessionDep, request: Request) -> User:
    """Admin actions are rare and powerful: check the caller still exists, is enabled and holds admin.
    An API key acts for its owner; a service client is checked in its own table; an external issuer
    vouches for its users. The last two act as a User of their subject's name, held nowhere."""
    if claims.method == "oidc":
        # The external issuer vouches for its users (OIDC_SCOPE_MAP granted admin): no local row.
        return User(username=claims.sub, hashed_password="", scopes=" ".join(claims.scopes), disabled=False)
    if claims.method == "client_credentials":
        client = service_clients.get_client(session, claims.sub.removeprefix(CLIENT_SUBJECT))
        if client is None or client.disabled or "admin" not in client.scopes.split():
            auth_failed("invalid_token", request, "admin token of a removed, disabled or demoted client")
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "Could not validate credentials", headers=_BEARER
            )
        return User(username=claims.sub, hashed_password="", scopes=client.scopes, disabled=False)
    user = crud.get_user(session, getattr(request.state, "key_owner", claims.sub))
    if user is None or user.disabled or "admin" not in user.scope_list:
        auth_failed("invalid_token", request, "admin token of a removed, disabled or demoted user")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Could not validate credentials", headers=_BEARER)
    return user


AdminDep = Annotated[User, Depends(current_admin)]
