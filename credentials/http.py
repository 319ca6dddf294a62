"""Small HTTP helper for the providers: JSON/form POSTs that fail with typed :class:`CredentialError`.

* timeout, connection failure, 5xx, 429 → :class:`CredentialUnavailable` (try again later);
* 400/401/403 and other 4xx → :class:`CredentialRejected` whose message says what to configure
  (providers pass an ``explain`` callback for the answers they recognise);
* a 2xx answer that is not a JSON object → :class:`CredentialUnavailable` (``bad_response``).

Messages never contain secrets or tokens: the values sent (client secret, subject token, bearer) are
redacted from anything echoed back, JWT-looking strings are masked, and URLs lose userinfo and query.
Redirects are not followed, so a secret is never re-sent to another host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr
from yarl import URL

from credentials.base import CredentialError, CredentialRejected, CredentialUnavailable

__all__ = ["Explain", "HttpClient", "HttpErrorInfo", "redact", "safe_url"]

#: Form fields whose values are secret.
SECRET_FIELDS = frozenset({"client_secret", "subject_token", "actor_token", "password", "refresh_token",
                           "assertion", "client_assertion", "access_token"})
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_MAX_DETAIL = 300


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret replaced by ``***`` and JWT-looking strings masked."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _JWT_RE.sub("<token>", text)


def safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment — fit for messages and logs."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid url>"


@dataclass(frozen=True)
class HttpErrorInfo:
    """A non-2xx answer, already redacted."""

    provider: str
    user: str | None
    what: str
    url: str
    status: int
    #: OAuth ``error`` or CloudSigma ``error_type``.
    error: str | None
    #: OAuth ``error_description``, CloudSigma ``error_message`` or a snippet of the body.
    description: str | None
    request_id: str | None

    def detail(self) -> str:
        text = f"HTTP {self.status}"
        if self.error:
            text += f" {self.error}"
        if self.description:
            text += f": {self.description}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def rejected(self, message: str, *, reason: str) -> CredentialRejected:
        return CredentialRejected(message, provider=self.provider, user=self.user, reason=reason,
                                  request_id=self.request_id)

    def unavailable(self, message: str, *, reason: str) -> CredentialUnavailable:
        return CredentialUnavailable(message, provider=self.provider, user=self.user, reason=reason,
                                     request_id=self.request_id)


#: Provider hook: turn a recognised error answer into a specific error, or ``None`` for the default.
Explain = Callable[[HttpErrorInfo], CredentialError | None]


def _parse_error(body: str) -> tuple[str | None, str | None]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        snippet = " ".join(body.split())[:_MAX_DETAIL]
        return None, snippet or None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # CloudSigma: [{"error_type", "error_message", "error_point"}]
    if not isinstance(data, dict):
        return None, None
    code = data.get("error") if data.get("error") is not None else data.get("error_type")
    desc = data.get("error_description") if data.get("error_description") is not None \
        else data.get("error_message")
    if desc is None and isinstance(data.get("message"), str):
        desc = data["message"]
    return (str(code)[:100] if code is not None else None,
            str(desc)[:_MAX_DETAIL] if desc is not None else None)


def _default_error(info: HttpErrorInfo) -> CredentialError:
    where = f"{info.what} at {info.url}"
    if info.status == 429 or info.status == 408 or info.status >= 500:
        reason = "rate_limited" if info.status == 429 else "server_error"
        return info.unavailable(f"{where} failed with {info.detail()}; will retry", reason=reason)
    if info.status == 401:
        return info.rejected(f"{where} refused the client's authentication ({info.detail()}): check "
                             "CLOUDSIGMA_CLIENT_ID and CLOUDSIGMA_CLIENT_SECRET", reason="unauthorized")
    if info.status == 403:
        return info.rejected(f"{where} was denied ({info.detail()}): the client lacks the permission "
                             "for this request", reason="forbidden")
    if info.status == 400:
        return info.rejected(f"{where} was rejected as invalid ({info.detail()}): check the configured "
                             "client, realm and audience", reason="bad_request")
    if info.status in (404, 405):
        return info.rejected(f"{where} does not exist ({info.detail()}): check the configured URL "
                             "(CLOUDSIGMA_OAUTH_URL, CLOUDSIGMA_OAUTH_REALM or the service-provider URL)",
                             reason="not_found")
    if 300 <= info.status < 400:
        return info.rejected(f"{where} answered with a redirect ({info.detail()}); redirects are not "
                             "followed with credentials: configure the final URL", reason="redirect")
    return info.rejected(f"{where} failed with {info.detail()}", reason=f"http_{info.status}")


class HttpClient:
    """One aiohttp session per provider, created lazily inside the running event loop."""

    def __init__(self, *, provider: str, timeout: float = 15.0,
                 session: aiohttp.ClientSession | None = None, trust_env: bool = False) -> None:
        self.provider = provider
        self.timeout = timeout
        self.trust_env = trust_env
        self._session = session
        self._owns_session = session is None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=self.trust_env,
                headers={"User-Agent": "cloudsigma-ccm"},
            )
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._session = None

    async def post_form(self, url: str, data: Mapping[str, str], *, what: str, user: str | None = None,
                        bearer: SecretStr | None = None, explain: Explain | None = None) -> dict[str, Any]:
        secrets = [v for k, v in data.items() if k in SECRET_FIELDS]
        return await self._request("POST", url, what=what, user=user, bearer=bearer, explain=explain,
                                   secrets=secrets, data=dict(data))

    async def post_json(self, url: str, payload: Mapping[str, Any], *, what: str, user: str | None = None,
                        bearer: SecretStr | None = None, explain: Explain | None = None) -> dict[str, Any]:
        secrets = [v for k, v in payload.items() if k in SECRET_FIELDS and isinstance(v, str)]
        return await self._request("POST", url, what=what, user=user, bearer=bearer, explain=explain,
                                   secrets=secrets, json=dict(payload))

    async def get_json(self, url: str, *, what: str, user: str | None = None,
                       explain: Explain | None = None) -> dict[str, Any]:
        return await self._request("GET", url, what=what, user=user, bearer=None, explain=explain, secrets=[])

    async def _request(self, method: str, url: str, *, what: str, user: str | None, bearer: SecretStr | None,
                       explain: Explain | None, secrets: list[str], **kwargs: Any) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            secrets = [*secrets, bearer.get_secret_value()]
            headers["Authorization"] = "Bearer " + bearer.get_secret_value()
        shown = safe_url(url)
        try:
            async with self._get_session().request(method, url, headers=headers, allow_redirects=False,
                                                   **kwargs) as resp:
                status = resp.status
                request_id = resp.headers.get("X-Request-ID")
                body = await resp.text(errors="replace")
        except TimeoutError:
            raise CredentialUnavailable(f"{what} at {shown} timed out after {self.timeout:g}s",
                                        provider=self.provider, user=user, reason="timeout") from None
        except aiohttp.ClientConnectionError as exc:
            raise CredentialUnavailable(f"{what}: cannot connect to {shown} ({type(exc).__name__})",
                                        provider=self.provider, user=user, reason="connection") from None
        except aiohttp.ClientError as exc:
            raise CredentialUnavailable(f"{what} at {shown} failed ({type(exc).__name__})",
                                        provider=self.provider, user=user, reason="connection") from None
        if 200 <= status < 300:
            try:
                data: Any = json.loads(body)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise CredentialUnavailable(f"{what} at {shown} answered HTTP {status} without a JSON object",
                                            provider=self.provider, user=user, reason="bad_response",
                                            request_id=request_id)
            return data
        code, description = _parse_error(body)
        info = HttpErrorInfo(
            provider=self.provider, user=user, what=what, url=shown, status=status,
            error=redact(code, secrets) if code else None,
            description=redact(description, secrets) if description else None,
            request_id=request_id,
        )
        error = explain(info) if explain is not None else None
        raise error if error is not None else _default_error(info)
