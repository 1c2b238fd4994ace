from __future__ import annotations

import datetime as dt

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.auth import Principal, TokenVerifier, mint_token
from service.errors import AnalyticsError, ErrorKind
from service.settings import Settings


@pytest.mark.parametrize(
    ("granted", "wanted", "allowed"),
    [
        ({"crm.deals.read"}, "crm.deals.read", True),
        ({"crm.*.read"}, "crm.deals.read", True),
        ({"*.*.read"}, "billing.invoices.read", True),
        ({"crm.contacts.read"}, "crm.deals.read", False),
        ({"crm.*"}, "crm.deals.read", False),
        ({"crm.deals.write"}, "crm.deals.read", False),
        ({"*"}, "crm.deals.read", False),
        (set(), "crm.deals.read", False),
    ],
)
def test_permission_matching(granted: set[str], wanted: str, allowed: bool) -> None:
    principal = Principal("s", "t", frozenset(granted))
    assert principal.has_permission(wanted) is allowed


def test_hs256_round_trip() -> None:
    settings = Settings()
    token = mint_token(settings, subject="svc", tenant="acme", permissions=["crm.deals.read"])
    principal = TokenVerifier(settings).verify_header(f"Bearer {token}")
    assert principal == Principal("svc", "acme", frozenset({"crm.deals.read"}))


def test_rs256_round_trip_and_hs256_tokens_refused(tmp_path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = Settings(jwt_public_key=str(public_file), jwt_private_key=private_pem)
    token = mint_token(settings, subject="svc", tenant="globex", permissions=["*.*.read"])
    assert TokenVerifier(settings).verify(token).tenant == "globex"
    forged = mint_token(Settings(), subject="svc", tenant="globex", permissions=["*.*.read"])
    with pytest.raises(AnalyticsError) as caught:
        TokenVerifier(settings).verify(forged)
    assert caught.value.kind is ErrorKind.UNAUTHORIZED


def _claims_token(settings: Settings, **claims: object) -> str:
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "s", "tenant_id": "acme"}, "exp"),
        ({"tenant_id": "acme", "exp": 4102444800}, "sub"),
        ({"sub": "s", "exp": 4102444800}, "tenant_id"),
        ({"sub": "s", "tenant_id": "", "exp": 4102444800}, "tenant_id"),
        ({"sub": "s", "tenant_id": ["a"], "exp": 4102444800}, "tenant_id"),
        ({"sub": "s", "tenant_id": "acme", "exp": 946684800}, "expired"),
    ],
)
def test_bad_claims_are_unauthenticated(claims: dict[str, object], message: str) -> None:
    settings = Settings()
    with pytest.raises(AnalyticsError, match=message) as caught:
        TokenVerifier(settings).verify(_claims_token(settings, **claims))
    assert caught.value.kind is ErrorKind.UNAUTHORIZED


def test_alg_none_is_refused() -> None:
    token = jwt.encode(
        {"sub": "s", "tenant_id": "acme", "exp": 4102444800}, key="", algorithm="none"
    )
    with pytest.raises(AnalyticsError):
        TokenVerifier(Settings()).verify(token)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Token abc", "bearer"])
def test_malformed_headers(header: str | None) -> None:
    with pytest.raises(AnalyticsError) as caught:
        TokenVerifier(Settings()).verify_header(header)
    assert caught.value.kind is ErrorKind.UNAUTHORIZED


def test_audience_and_issuer_are_enforced_when_configured() -> None:
    strict = Settings(jwt_audience="analytics", jwt_issuer="https://idp.example")
    good = mint_token(strict, subject="s", tenant="acme", permissions=[])
    assert TokenVerifier(strict).verify(good).tenant == "acme"
    other = mint_token(Settings(), subject="s", tenant="acme", permissions=[])
    with pytest.raises(AnalyticsError):
        TokenVerifier(strict).verify(other)


def test_permissions_claim_may_be_a_space_separated_string() -> None:
    settings = Settings()
    token = _claims_token(
        settings,
        sub="s",
        tenant_id="acme",
        exp=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        permissions="crm.deals.read billing.invoices.read",
    )
    principal = TokenVerifier(settings).verify(token)
    assert principal.permissions == {"crm.deals.read", "billing.invoices.read"}


def test_a_verified_token_is_remembered_until_its_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    verifier = TokenVerifier(settings)
    token = mint_token(settings, subject="svc", tenant="acme", permissions=["crm.deals.read"])
    other = mint_token(settings, subject="svc", tenant="globex", permissions=["crm.deals.read"])
    first = verifier.verify(token)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]

    def refuse(_: str) -> tuple[Principal, float]:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "verified again", "UNAUTHENTICATED")

    monkeypatch.setattr(verifier, "_decode", refuse)
    assert verifier.verify(token) == first  # from memory: not verified again
    with pytest.raises(AnalyticsError):
        verifier.verify(other)  # another text is never taken for a remembered one
    with pytest.raises(AnalyticsError):
        verifier.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    monkeypatch.setattr("service.auth.time.time", lambda: expires + 1)
    with pytest.raises(AnalyticsError, match="verified again"):
        verifier.verify(token)  # past its expiry it is verified (and refused) afresh
