"""Build ApiClients for the tenant and management clusters, without global configuration.

A :class:`KubeconfigClient` follows a mounted kubeconfig: when the file is rotated (a Secret volume swaps its
``..data`` symlink; see :class:`credentials.files.WatchedFile`) the next request builds a new ApiClient from the
new content, and the old one is closed once the requests and watches still using it have ended. A ``tokenFile``
the kubeconfig names is re-read when it changes, too. A rotated file that cannot be used is logged (path and
problem, never the content) and the last good client keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ccm.kube.kubeconfig import Kubeconfig, KubeconfigError, parse_kubeconfig, read_kubeconfig
from ccm.kube.library import ApiClient, ConfigException, Configuration, KubeConfigLoader, load_incluster_config
from credentials.files import WatchedFile

__all__ = ["KubeconfigClient", "KubeconfigError", "api_client", "api_client_from_dict", "in_cluster_namespace"]

log = structlog.get_logger(__name__)

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


async def _client_for(kubeconfig: Kubeconfig) -> ApiClient:
    """An ApiClient for a checked kubeconfig; library errors become one-line :class:`KubeconfigError`."""
    cfg = Configuration()
    try:
        loader = KubeConfigLoader(config_dict=kubeconfig.document, config_base_path=str(kubeconfig.path.parent))
        await loader.load_and_set(cfg)
        client = ApiClient(configuration=cfg)
    except ConfigException as exc:  # the library's messages name keys and files, not values
        raise KubeconfigError(kubeconfig.path, f"cannot be loaded: {exc}") from None
    except (OSError, ValueError) as exc:  # bad base64, unreadable or malformed certificate/key files
        raise KubeconfigError(kubeconfig.path, f"credentials cannot be loaded ({type(exc).__name__}): check the "
                                               "certificate, key and CA entries") from None
    if kubeconfig.token_file is not None:
        try:
            _follow_token_file(cfg, kubeconfig.token_file)
        except (OSError, UnicodeDecodeError):
            await client.close()
            raise KubeconfigError(kubeconfig.path, f"the tokenFile of user '{kubeconfig.user}' "
                                                   f"({kubeconfig.token_file}) cannot be read") from None
    _skip_env_lookups(client)
    return client


async def api_client_from_dict(document: dict[str, Any], *, source: str, user_agent: str | None = None,
                               max_connections: int | None = None) -> ApiClient:
    """An ApiClient for a kubeconfig held in memory (a tenant's Cluster API Secret in fleet mode), already checked
    to be self-contained (:func:`ccm.clusters.tenants.parse_kubeconfig`: inline credentials, no files, no plugins).
    The library writes inline certificates to temporary files of its own. ``max_connections`` caps its pool (the
    library's default is 100). Problems are a one-line :class:`KubeconfigError` naming ``source`` (e.g. the
    Secret), never the content."""
    cfg = Configuration()
    if max_connections is not None:
        cfg.connection_pool_maxsize = max_connections
    where = Path(source)
    try:
        loader = KubeConfigLoader(config_dict=document)
        await loader.load_and_set(cfg)
        client = ApiClient(configuration=cfg)
    except ConfigException as exc:
        raise KubeconfigError(where, f"cannot be loaded: {exc}") from None
    except (OSError, ValueError) as exc:
        raise KubeconfigError(where, f"credentials cannot be loaded ({type(exc).__name__}): check the "
                                     "certificate, key and CA entries") from None
    if user_agent:
        client.user_agent = user_agent
    _skip_env_lookups(client)
    return client


def _follow_token_file(cfg: Configuration, path: Path) -> None:
    """Serve the bearer token from ``path`` as it is now (a projected token is rotated by the kubelet)."""
    token = WatchedFile(path, what="kubeconfig token file")

    def refresh(configuration: Configuration, *_: Any) -> None:
        configuration.api_key["BearerToken"] = "Bearer " + token.read_text()

    refresh(cfg)
    cfg.refresh_api_key_hook = refresh


async def api_client(kubeconfig: Path | None) -> ApiClient:
    """An ApiClient for ``kubeconfig`` as it is now, or the in-cluster service account when ``None``.

    Never calls ``Configuration.set_default``: the tenant and the management cluster each get their own. The
    in-cluster configuration re-reads the projected service-account token by itself (kubernetes-asyncio).
    """
    if kubeconfig is not None:
        return await _client_for(read_kubeconfig(kubeconfig))
    cfg = Configuration()
    load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    client = ApiClient(configuration=cfg)
    _skip_env_lookups(client)
    return client


@dataclass(eq=False)
class _Generation:
    client: ApiClient
    version: int
    users: int = 0
    retired: bool = False


class KubeconfigClient:
    """The ApiClient of a kubeconfig file, rebuilt when the file changes. Borrow it per request."""

    def __init__(self, path: Path, *, what: str, check_interval: float = 1.0) -> None:
        self.path = path
        self.what = what
        self._file = WatchedFile(path, what=what, check_interval=check_interval)
        self._current: _Generation | None = None
        self._rejected_version = 0
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        #: Successful reloads after the first load: tests read it.
        self.reloads = 0

    @classmethod
    async def open(cls, path: Path, *, what: str, check_interval: float = 1.0) -> KubeconfigClient:
        """Load ``path`` now; raise :class:`KubeconfigError` (one line) when it cannot be used."""
        source = cls(path, what=what, check_interval=check_interval)
        try:
            text = source._file.read_text()
        except OSError as exc:
            raise KubeconfigError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise KubeconfigError(path, "is not text (not a kubeconfig)") from None
        source._current = _Generation(await _client_for(parse_kubeconfig(path, text)), source._file.version)
        return source

    @property
    def client(self) -> ApiClient:
        """The current ApiClient (without checking the file)."""
        assert self._current is not None, "KubeconfigClient used before open()"
        return self._current.client

    async def _refresh(self) -> _Generation:
        current = self._current
        assert current is not None, "KubeconfigClient used before open()"
        try:
            text = self._file.read_text()  # one stat at most every check_interval; keeps last good content
        except (OSError, UnicodeDecodeError):
            return current
        version = self._file.version
        if version == current.version or version == self._rejected_version:
            return current
        async with self._lock:
            current = self._current
            assert current is not None
            if version == current.version:
                return current
            try:
                client = await _client_for(parse_kubeconfig(self.path, text))
            except KubeconfigError as exc:
                self._rejected_version = version
                log.warning("kubeconfig_rejected", path=str(self.path), what=self.what, problem=exc.problem,
                            keeping="the previous credentials")
                return current
            fresh = _Generation(client, version)
            self._current = fresh
            self.reloads += 1
            log.info("kubeconfig_reloaded", path=str(self.path), what=self.what, version=version)
            current.retired = True
            if current.users == 0:
                self._close_later(current)
            return fresh

    def _close_later(self, generation: _Generation) -> None:
        task = asyncio.get_running_loop().create_task(generation.client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[ApiClient]:
        """The ApiClient to use for one request or watch; an old one is closed after its last borrower."""
        generation = await self._refresh()
        generation.users += 1
        try:
            yield generation.client
        finally:
            generation.users -= 1
            if generation.retired and generation.users == 0:
                self._close_later(generation)

    async def close(self) -> None:
        if self._current is not None:
            await self._current.client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NETRC")


def _skip_env_lookups(client: ApiClient) -> None:
    """kubernetes-asyncio's session trusts the environment, so aiohttp looks up proxies and ~/.netrc in a
    thread for *every* request — the largest CPU cost of a burst of node writes (py-spy). Without any proxy
    variable there is nothing to find: switch the lookups off. With one set, keep the library's behaviour."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return
    session = getattr(getattr(client, "rest_client", None), "pool_manager", None)
    if session is not None and hasattr(session, "_trust_env"):
        session._trust_env = False


def in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None
