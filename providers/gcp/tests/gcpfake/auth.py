"""Service-account keys made by the test, and verification of what google-auth signs with them.

google-auth signs an RS256 JWT with the account's private key: either a
self-signed JWT sent straight to the API as the bearer token (``aud`` the API or
a ``scope`` claim), or an assertion exchanged at ``token_uri`` for an access
token.  ``Accounts`` verifies either with the account's public key.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

#: clock skew tolerated on iat/exp (seconds)
SKEW = 300


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ServiceAccount:
    email: str
    key_id: str
    private_key_pem: str
    public_key: rsa.RSAPublicKey

    def key_json(self, project: str, token_uri: str) -> str:
        """The key file's content, as ``gcloud iam service-accounts keys create`` writes it."""
        return json.dumps(
            {
                "type": "service_account",
                "project_id": project,
                "private_key_id": self.key_id,
                "private_key": self.private_key_pem,
                "client_email": self.email,
                "client_id": str(secrets.randbelow(10**20)),
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "universe_domain": "googleapis.com",
            }
        )


def new_service_account(project: str, name: str = "peerpods") -> ServiceAccount:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ServiceAccount(
        f"{name}@{project}.iam.gserviceaccount.com", secrets.token_hex(20), pem, key.public_key()
    )


class AuthError(Exception):
    pass


class Accounts:
    """Known accounts, verified JWTs, and the access tokens the fake token endpoint issued."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[str, ServiceAccount] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self.self_signed = 0
        self.exchanged = 0

    def add(self, account: ServiceAccount) -> None:
        with self._lock:
            self._accounts[account.email] = account

    def verify_jwt(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        """The claims of a JWT signed by a known account's key, for one of ``audiences`` or a scope."""
        try:
            head_b64, body_b64, sig_b64 = token.split(".")
            header = json.loads(_unb64(head_b64))
            claims = json.loads(_unb64(body_b64))
            signature = _unb64(sig_b64)
        except ValueError as exc:
            raise AuthError(f"malformed JWT: {exc}") from exc
        if header.get("alg") != "RS256":
            raise AuthError(f"unexpected alg {header.get('alg')}")
        with self._lock:
            account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            raise AuthError(f"unknown issuer {claims.get('iss')}")
        if header.get("kid") not in (None, account.key_id):
            raise AuthError("unknown key id")
        try:
            account.public_key.verify(
                signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature as exc:
            raise AuthError("bad signature") from exc
        now = time.time()
        if not (float(claims.get("iat", 0)) - SKEW <= now <= float(claims.get("exp", 0)) + SKEW):
            raise AuthError("token expired or not yet valid")
        scopes = str(claims.get("scope", "")).split()
        if (
            claims.get("aud") not in audiences
            and "https://www.googleapis.com/auth/cloud-platform" not in scopes
        ):
            raise AuthError(f"audience {claims.get('aud')!r} / scope {scopes} not accepted")
        return dict(claims)

    def issue(self, assertion: str, token_uri: str) -> dict[str, Any]:
        claims = self.verify_jwt(assertion, (token_uri, "https://oauth2.googleapis.com/token"))
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (str(claims["iss"]), time.time() + 3600)
            self.exchanged += 1
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def check_bearer(self, authorization: str, audiences: tuple[str, ...]) -> str:
        """The caller's email for an ``Authorization`` header; AuthError when it proves nothing."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("no bearer token")
        with self._lock:
            issued = self._tokens.get(token)
        if issued is not None:
            if issued[1] < time.time():
                raise AuthError("access token expired")
            return issued[0]
        claims = self.verify_jwt(token, audiences)
        with self._lock:
            self.self_signed += 1
        return str(claims["iss"])
