"""Reading Nodes (and, for the informers, any collection)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from ccm.kube.transport import JSON, KubeTransport

NODES = "/api/v1/nodes"


async def get_node(kube: KubeTransport, name: str) -> JSON:
    return await kube.request("GET", f"{NODES}/{name}")


async def list_nodes(kube: KubeTransport, *, page_size: int = 500) -> tuple[list[JSON], str]:
    """All Nodes (paged with ``limit``/``continue``) and the list's resourceVersion to watch from."""
    return await list_all(kube, NODES, page_size=page_size)


async def list_pages(kube: KubeTransport, path: str, *, query: Mapping[str, Any] | None = None,
                     page_size: int = 500) -> AsyncIterator[tuple[list[JSON], str]]:
    """The objects at ``path`` one page at a time (``limit``/``continue``), each with the resourceVersion the
    list had so far (the last page's is the one to watch from). A caller that keeps only a digest of each
    object holds one page of the API's JSON at a time, not the whole collection."""
    token: str | None = None
    version = ""
    while True:
        page_query: dict[str, Any] = {**(query or {}), "limit": page_size}
        if token:
            page_query["continue"] = token
        page = await kube.request("GET", path, query=page_query)
        meta = page.get("metadata") or {}
        version = str(meta.get("resourceVersion") or version)
        token = meta.get("continue")
        items = [i for i in page.get("items", []) if isinstance(i, dict)]
        del page, meta  # hold one page at a time: the caller's digest of it is all that stays
        yield items, version
        del items
        if not token:
            return


async def list_all(kube: KubeTransport, path: str, *, query: Mapping[str, Any] | None = None,
                   page_size: int = 500) -> tuple[list[JSON], str]:
    """Every object at ``path`` (paged with ``limit``/``continue``) and the list's resourceVersion to watch from."""
    items: list[JSON] = []
    version = ""
    async for page, listed_at in list_pages(kube, path, query=query, page_size=page_size):
        items.extend(page)
        version = listed_at
    return items, version
