"""Reading a kubeconfig file: parse it, check it names a usable cluster and user, say in one line what is wrong.

Supported ways for the user to authenticate: a client certificate and key (inline or files), a bearer ``token``,
a ``tokenFile`` (re-read when it changes, see :mod:`ccm.kube.clients`), username/password, or none. An ``exec``
plugin or an ``auth-provider`` is refused at start-up: their credentials expire and the library we use would
never refresh them, so the CCM would fail hours later instead of now. Mount a kubeconfig with a client
certificate (what Cluster API writes) or a token file instead.

Messages never contain the file's content (it holds credentials): only the path, the entry names and the key
that is missing or unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Kubeconfig", "KubeconfigError", "parse_kubeconfig", "read_kubeconfig"]


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be used. ``str()`` is one line naming the file and what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Kubeconfig:
    """A checked kubeconfig: the parsed document and what its current user authenticates with."""

    path: Path
    document: dict[str, Any]
    user: str
    #: ``client-certificate``, ``token``, ``token-file``, ``basic`` or ``none``.
    auth: str
    #: For ``token-file``: the file to watch (absolute).
    token_file: Path | None = None


def _named(doc: dict[str, Any], section: str, name: str, path: Path) -> dict[str, Any]:
    entries = doc.get(section)
    if not isinstance(entries, list):
        raise KubeconfigError(path, f"has no '{section}' list")
    found = [e for e in entries if isinstance(e, dict) and e.get("name") == name]
    if not found:
        raise KubeconfigError(path, f"'{section}' has no entry named '{name}'")
    if len(found) > 1:
        raise KubeconfigError(path, f"'{section}' has several entries named '{name}'")
    body = found[0].get(section[:-1])
    if not isinstance(body, dict):
        raise KubeconfigError(path, f"entry '{name}' of '{section}' has no '{section[:-1]}' mapping")
    return body


def parse_kubeconfig(path: Path, text: str) -> Kubeconfig:
    """Check ``text`` (the content of ``path``); raise :class:`KubeconfigError` with one line if unusable."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise KubeconfigError(path, f"is not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(path, "is not a kubeconfig (expected a YAML mapping with clusters, contexts, users)")
    context_name = doc.get("current-context")
    if not isinstance(context_name, str) or not context_name:
        raise KubeconfigError(path, "has no current-context")
    context = _named(doc, "contexts", context_name, path)
    cluster_name = context.get("cluster")
    if not isinstance(cluster_name, str):
        raise KubeconfigError(path, f"context '{context_name}' names no cluster")
    cluster = _named(doc, "clusters", cluster_name, path)
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeconfigError(path, f"cluster '{cluster_name}' has no http(s) server URL")
    user_name = context.get("user")
    if not isinstance(user_name, str) or not user_name:
        return Kubeconfig(path, doc, "", "none")
    user = _named(doc, "users", user_name, path)
    for unsupported, what in (("exec", "an exec plugin"), ("auth-provider", "an auth-provider")):
        if user.get(unsupported):
            raise KubeconfigError(path, f"user '{user_name}' authenticates with {what}, which is not supported "
                                        "(its credentials would expire unrefreshed): use a client certificate, "
                                        "a token or a tokenFile")
    has_cert = bool(user.get("client-certificate-data") or user.get("client-certificate"))
    has_key = bool(user.get("client-key-data") or user.get("client-key"))
    if has_cert != has_key:
        raise KubeconfigError(path, f"user '{user_name}' has a client certificate without its key (or a key "
                                    "without its certificate)")
    if has_cert:
        return Kubeconfig(path, doc, user_name, "client-certificate")
    if user.get("token"):
        return Kubeconfig(path, doc, user_name, "token")
    token_file = user.get("tokenFile")
    if isinstance(token_file, str) and token_file:
        resolved = (path.parent / token_file) if not Path(token_file).is_absolute() else Path(token_file)
        return Kubeconfig(path, doc, user_name, "token-file", token_file=resolved)
    if user.get("username") and user.get("password"):
        return Kubeconfig(path, doc, user_name, "basic")
    return Kubeconfig(path, doc, user_name, "none")


def read_kubeconfig(path: Path) -> Kubeconfig:
    """Read and check ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KubeconfigError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise KubeconfigError(path, "is not text (not a kubeconfig)") from None
    return parse_kubeconfig(path, text)
