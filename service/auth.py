"""Bearer-token authentication: verify a JWT, read the tenant and permissions from its claims.

The tenant always comes from the verified token, never from the request. Permissions are
``{module}.{model}.read`` strings; a ``*`` segment matches any one segment (``crm.*.read``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from service.errors import unauthorized
from service.settings import Settings, read_key_material

ADMIN_PERMISSION = "analytics.admin"
_LEEWAY_SECONDS = 30
#: Verified tokens remembered (a service sees a handful of callers' tokens again and again).
_VERIFIED_TOKENS = 4096


@dataclass(frozen=True)
class Principal:
    """Who is calling: token subject, tenant, and granted permissions."""

    subject: str
    tenant: str
    permissions: frozenset[str]

    def has_permission(self, permission: str) -> bool:
        """Whether a granted permission (with ``*`` segments) covers ``permission``."""
        wanted = permission.split(".")
        for granted in self.permissions:
            parts = granted.split(".")
            if len(parts) == len(wanted) and all(
                p in ("*", w) for p, w in zip(parts, wanted, strict=True)
            ):
                return True
        return False


class TokenVerifier:
    """Verifies bearer tokens with the settings' HS256 secret or RS256 public key."""

    def __init__(self, settings: Settings) -> None:
        """Pick the key and algorithm from the settings."""
        self._settings = settings
        if settings.jwt_public_key:
            self._key: str = read_key_material(settings.jwt_public_key)
            self._algorithms = ["RS256"]
        elif settings.jwt_secret is not None:
            self._key = settings.jwt_secret.get_secret_value()
            self._algorithms = ["HS256"]
        else:
            raise ValueError("set jwt_secret (HS256) or jwt_public_key (RS256)")
        # token -> (principal, expiry): verifying the signature and claims of the same token on
        # every call was a tenth of the server's time for small Ingest calls (profiled).
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def verify_header(self, authorization: str | None) -> Principal:
        """Verify an ``Authorization: Bearer <jwt>`` value; raise UNAUTHORIZED otherwise."""
        if not authorization:
            raise unauthorized("missing bearer token: send 'authorization: Bearer <jwt>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("the authorization header must be 'Bearer <jwt>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        """Verify a JWT and read its principal.

        A token verified before is taken from memory until its ``exp`` (without the leeway a
        fresh verification allows): the same text with the same key verifies the same way.
        """
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, expires = remembered
            if time.time() < expires:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, expires = self._decode(token)
        self._verified[token] = (principal, expires)
        if len(self._verified) > _VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        settings = self._settings
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=_LEEWAY_SECONDS,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": settings.jwt_audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the bearer token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid bearer token: {exc}") from None
        tenant = claims.get(settings.tenant_claim)
        if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
            raise unauthorized(f"the token has no usable {settings.tenant_claim!r} claim")
        principal = Principal(
            subject=str(claims["sub"]),
            tenant=tenant,
            permissions=_permissions(claims.get(settings.permissions_claim)),
        )
        return principal, float(claims["exp"])


def _permissions(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(p for p in value if isinstance(p, str))
    return frozenset()


def mint_token(
    settings: Settings,
    *,
    subject: str,
    tenant: str,
    permissions: Iterable[str],
    ttl: dt.timedelta = dt.timedelta(hours=12),
) -> str:
    """Sign a token the service accepts (development and tests; production uses the IdP's)."""
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "sub": subject,
        settings.tenant_claim: tenant,
        settings.permissions_claim: sorted(set(permissions)),
        "iat": now,
        "exp": now + ttl,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_public_key:
        if not settings.jwt_private_key:
            raise ValueError("RS256 is configured: set ANALYTICS_JWT_PRIVATE_KEY to mint tokens")
        return jwt.encode(claims, read_key_material(settings.jwt_private_key), algorithm="RS256")
    if settings.jwt_secret is None:
        raise ValueError("set jwt_secret (HS256) or jwt_private_key (RS256) to mint tokens")
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
