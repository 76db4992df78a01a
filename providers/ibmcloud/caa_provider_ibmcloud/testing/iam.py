"""A fake IAM token endpoint: the API-key and trusted-profile (cr-token) grants, as IBM Cloud answers them.

The SDK's authenticators post a form to ``/identity/token`` and decode the
``access_token`` as a JWT to learn when to refresh it; this fake issues signed
JWTs with ``iat``/``exp`` and remembers them, so every other fake on the same
server can refuse a request whose bearer token IAM never issued (401, as the
real services do).  Shared by the VPC and PowerVS fakes.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

import jwt

from caa_provider_ibmcloud.testing.server import FakeServer, Refusal, Reply, Request

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
CR_TOKEN_GRANT = "urn:ibm:params:oauth:grant-type:cr-token"
#: the account every issued token names (claim account.bss)
ACCOUNT = "fakeaccount"


class FakeIam:
    """Issues tokens for the known API keys and trusted profiles; checks bearer tokens."""

    def __init__(self, api_keys: set[str], *, lifetime: int = 3600) -> None:
        self.api_keys = set(api_keys)
        #: trusted profile id -> the compute-resource (service account) token it trusts
        self.profiles: dict[str, str] = {}
        self.lifetime = lifetime
        self._secret = secrets.token_bytes(32)
        self._issued: set[str] = set()
        self._lock = threading.Lock()
        self.grants: list[str] = []

    def install(self, server: FakeServer) -> None:
        server.route("POST", "/identity/token", self.token, public=True)
        server.require_auth(self.check)

    def token(self, request: Request) -> Reply:
        form = request.form()
        grant = form.get("grant_type", "")
        if grant == APIKEY_GRANT:
            if form.get("apikey") not in self.api_keys:
                return Reply(
                    400, {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."}
                )
            subject = "iam-ServiceId-fake"
        elif grant == CR_TOKEN_GRANT:
            profile = form.get("profile_id", "")
            if self.profiles.get(profile) != form.get("cr_token"):
                return Reply(
                    400, {"errorCode": "BXNIM0538E", "errorMessage": "Compute resource token is not trusted."}
                )
            subject = f"iam-Profile-{profile}"
        else:
            return Reply(
                400, {"errorCode": "BXNIM0109E", "errorMessage": f"unsupported grant_type {grant!r}"}
            )
        now = int(time.time())
        claims = {
            "sub": subject,
            "account": {"bss": ACCOUNT},
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        with self._lock:
            self._issued.add(token)
            self.grants.append(grant)
        return Reply(
            200,
            {
                "access_token": token,
                "refresh_token": "not_supported",
                "token_type": "Bearer",
                "expires_in": self.lifetime,
                "expiration": now + self.lifetime,
            },
        )

    def check(self, request: Request) -> None:
        """Refuse (401) a request without a bearer token this IAM issued and that has not expired."""
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        with self._lock:
            known = token in self._issued
        if not header.startswith("Bearer ") or not known:
            raise Refusal(401, "not_authorized", "The request is not authorized: no valid IAM token")
        try:
            jwt.decode(token, self._secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise Refusal(401, "token_expired", f"The IAM token is not valid: {exc}") from exc
