"""IAM credentials for every IBM Cloud client of both IBM providers.

An API key goes through ``IAMAuthenticator`` (the API-key grant at the IAM token
endpoint); a trusted profile id goes through ``ContainerAuthenticator``, which
trades the projected Kubernetes service account token for an IAM token.  The SDK
caches the token and refreshes it before it expires; one authenticator is shared
by all clients of a provider, so a burst of calls triggers one token request.
"""

from __future__ import annotations

from typing import Any

#: the token operation's path, which the SDK appends to the IAM base URL itself
TOKEN_PATH = "/identity/token"


def iam_base_url(endpoint: str) -> str:
    """The IAM base URL the SDK wants, from the Go key's full token URL (or a base URL)."""
    url = endpoint.rstrip("/")
    return url[: -len(TOKEN_PATH)] if url.endswith(TOKEN_PATH) else url


def make_authenticator(*, api_key: str, profile_id: str, iam_endpoint: str, cr_token_file: str) -> Any:
    """An SDK authenticator: the API key if set, else the trusted profile with the projected token."""
    from ibm_cloud_sdk_core.authenticators import ContainerAuthenticator, IAMAuthenticator

    url = iam_base_url(iam_endpoint)
    authenticator: Any
    if api_key:
        authenticator = IAMAuthenticator(api_key, url=url)
    else:
        authenticator = ContainerAuthenticator(
            iam_profile_id=profile_id, cr_token_filename=cr_token_file, url=url
        )
    _release_pacing_on_failure(authenticator.token_manager)
    return authenticator


def _release_pacing_on_failure(manager: Any) -> None:
    """Let the next caller ask again at once after a failed token request.

    The SDK marks a token request "in flight" for 60 seconds and does not clear
    the mark when the request fails, so one IAM 503 would stall every API call
    of the provider for a minute.  Clearing it makes a failed token request an
    ordinary temporary error our retry policy handles.
    """
    request = manager.request_token

    def request_token() -> Any:
        try:
            return request()
        except Exception:
            manager.request_time = 0
            raise

    manager.request_token = request_token
