"""Raw JSON requests to the Kubernetes API over a kubernetes-asyncio ApiClient.

Nodes are handled as plain dicts: cheaper than the generated models at thousands of nodes, and exactly
what the API sends (no lossy round trip through model classes before a merge patch).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from ccm.kube.errors import KubeError, KubeUnavailable, error_for
from ccm.kube.library import ApiClient
from ccm.kube.permissions import Permission, check, request_of

if TYPE_CHECKING:
    from ccm.kube.clients import KubeconfigClient

JSON = dict[str, Any]


class WriteFence(Protocol):
    """What a write asks first (:class:`ccm.fencing.Fence`, which lives above this layer): a context around one
    write that refuses it, or cancels it in flight, with a :class:`~ccm.kube.errors.KubeError` once this process
    may no longer write."""

    def writing(self, method: str, path: str) -> contextlib.AbstractAsyncContextManager[object]: ...


def _kind(path: str) -> str:
    """``/api/v1/nodes/n1/status`` → ``nodes/status``: a bounded label for counting writes — the resource and
    subresource only, never an object's name (a fleet holds one Lease per tenant: names are unbounded)."""
    request = request_of("POST", path)
    if request is None:
        return "other"
    return f"{request.resource}/{request.subresource}" if request.subresource else request.resource


class KubeTransport:
    """Sends requests through an ApiClient (auth, TLS and server from its own Configuration).

    ``api_client`` is an ApiClient, or a :class:`~ccm.kube.clients.KubeconfigClient` that rebuilds it when the
    kubeconfig file is rotated (each request borrows the current one). With a ``fence``, every mutating request
    is checked against it before it is sent and cancelled if the fence closes while it is in flight. With
    ``permissions`` (ccm/kube/permissions.py), a request none of them covers raises
    :class:`~ccm.kube.permissions.UndeclaredRequest` instead of being sent.
    """

    def __init__(self, api_client: ApiClient | KubeconfigClient, *, timeout: float = 30.0,
                 on_write: Callable[[str, str], None] | None = None, fence: WriteFence | None = None,
                 permissions: Sequence[Permission] | None = None) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self._on_write = on_write
        self.fence = fence
        self.permissions = permissions
        #: Number of mutating requests sent, by verb: benchmarks and tests read it.
        self.writes: dict[str, int] = {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> JSON:
        if self.permissions is not None:
            check(self.permissions, method, path, query)
        if method != "GET" and self.fence is not None:
            async with self.fence.writing(method, path):
                return await self._request(method, path, query=query, body=body, content_type=content_type,
                                           timeout=timeout)
        return await self._request(method, path, query=query, body=body, content_type=content_type,
                                   timeout=timeout)

    def _borrow(self) -> contextlib.AbstractAsyncContextManager[ApiClient]:
        if isinstance(self.api_client, ApiClient):
            return contextlib.nullcontext(self.api_client)
        return self.api_client.borrow()

    async def _request(self, method: str, path: str, *, query: Mapping[str, Any] | None, body: Any,
                       content_type: str, timeout: float | None) -> JSON:
        if method != "GET":
            key = f"{method} {_kind(path)}"
            self.writes[key] = self.writes.get(key, 0) + 1
            if self._on_write is not None:
                self._on_write(method, _kind(path))
        async with self._borrow() as api_client:
            return await self._send(api_client, method, path, query=query, body=body, content_type=content_type,
                                    timeout=timeout)

    async def _send(self, api_client: ApiClient, method: str, path: str, *, query: Mapping[str, Any] | None,
                    body: Any, content_type: str, timeout: float | None) -> JSON:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            resp = await api_client.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers,
                body=body,
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout or self.timeout,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise KubeUnavailable(f"no answer: {type(exc).__name__}", method=method, path=path) from None
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise KubeUnavailable(f"answer broken off: {type(exc).__name__}", method=method, path=path) from None
        finally:
            resp.release()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        if not 200 <= resp.status < 300:
            raise error_for(resp.status, payload, method=method, path=path)
        return payload if isinstance(payload, dict) else {}

    async def stream(
        self, path: str, *, query: Mapping[str, Any], timeout: float
    ) -> AsyncIterator[JSON]:
        """A watch: yields each event object until the server closes the stream."""
        if self.permissions is not None:
            check(self.permissions, "GET", path, query)
        async with self._borrow() as api_client:
            async for event in self._stream(api_client, path, query=query, timeout=timeout):
                yield event

    async def _stream(
        self, api_client: ApiClient, path: str, *, query: Mapping[str, Any], timeout: float
    ) -> AsyncIterator[JSON]:
        try:
            resp = await api_client.call_api(
                path, "GET", query_params=list(query.items()), header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise KubeUnavailable(f"watch failed: {type(exc).__name__}", method="WATCH", path=path) from None
        try:
            if not 200 <= resp.status < 300:
                raw = await resp.read()
                try:
                    payload = json.loads(raw) if raw else {}
                except ValueError:
                    payload = {}
                raise error_for(resp.status, payload, method="WATCH", path=path)
            buffer = b""
            try:
                # Split on newlines ourselves: a Node can exceed aiohttp's readline limit (image lists).
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            event = json.loads(line)
                            if isinstance(event, dict):
                                yield event
            except TimeoutError:
                return  # the client-side timeout ends a watch like the server's would
            except aiohttp.ClientError as exc:
                raise KubeUnavailable(f"watch broken: {type(exc).__name__}", method="WATCH", path=path) from None
            except ValueError as exc:
                raise KubeError(f"undecodable watch event: {exc}", method="WATCH", path=path) from None
        finally:
            resp.release()
