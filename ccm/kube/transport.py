"""Raw JSON requests to the Kubernetes API over a kubernetes-asyncio ApiClient.

Nodes are handled as plain dicts: cheaper than the generated models at thousands of nodes, and exactly
what the API sends (no lossy round trip through model classes before a merge patch).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from ccm.kube.errors import KubeError, KubeUnavailable, error_for
from ccm.kube.permissions import Permission, check

JSON = dict[str, Any]


def _kind(path: str) -> str:
    """``/api/v1/nodes/n1/status`` → ``nodes/status``: a bounded label for counting writes."""
    parts = [p for p in path.split("/") if p]
    if "events" in parts:
        return "events"
    if "nodes" in parts:
        return "nodes/status" if parts[-1] == "status" else "nodes"
    return parts[-1] if parts else ""


class KubeTransport:
    """Sends requests through an ApiClient (auth, TLS and server from its own Configuration).

    With ``permissions`` (ccm/kube/permissions.py), a request none of them covers raises
    :class:`~ccm.kube.permissions.UndeclaredRequest` instead of being sent.
    """

    def __init__(self, api_client: ApiClient, *, timeout: float = 30.0,
                 on_write: Callable[[str, str], None] | None = None,
                 permissions: Sequence[Permission] | None = None) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self._on_write = on_write
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
        if method != "GET":
            key = f"{method} {_kind(path)}"
            self.writes[key] = self.writes.get(key, 0) + 1
            if self._on_write is not None:
                self._on_write(method, _kind(path))
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            resp = await self.api_client.call_api(
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
        try:
            resp = await self.api_client.call_api(
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
