"""kubernetes-asyncio's kubeconfig loader, Configuration and ApiClient, without its generated API and model classes.

The CCM talks to Kubernetes in raw JSON (:mod:`ccm.kube.transport`); from kubernetes-asyncio it needs the
kubeconfig loader, the in-cluster configuration, ``Configuration`` and ``ApiClient.call_api``. But the package
``kubernetes_asyncio`` imports every subpackage in its ``__init__``, and ``kubernetes_asyncio.client``'s
``__init__`` (run before any of its submodules, e.g. ``client.api_client``) imports every generated API and model
class: about 36 MiB of RSS and a third of a second of start-up for classes the daemon never uses.

So this module registers those three packages (``kubernetes_asyncio``, ``kubernetes_asyncio.client`` and
``kubernetes_asyncio.client.models``) as *deferred packages* before importing the submodules it needs: a module
object made from the package's own import spec (its real ``__path__``, so submodules import normally) whose
``__init__`` has not run. Reading a name the deferred package does not hold yet imports the submodule of that
name if there is one, and otherwise runs the package's real ``__init__`` into the same module object, once — so
code that does use the generated classes (``from kubernetes_asyncio.client import CoreV1Api``) still works, it
just pays for them then. A package already imported in full is left as it is.

Import kubernetes-asyncio's pieces through this module (``from ccm.kube.library import ApiClient``), never with
``from kubernetes_asyncio.client import ...`` first: tests/unit/test_import_graph.py fails if the daemon's entry
modules pull the generated classes in.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

__all__ = ["GENERATED_PACKAGES", "ApiClient", "ConfigException", "Configuration", "KubeConfigLoader",
           "generated_classes_loaded", "load_incluster_config"]

#: The packages holding the generated API and model classes; the daemon never imports them.
GENERATED_PACKAGES = ("kubernetes_asyncio.client.api", "kubernetes_asyncio.client.models")

_DEFERRED = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")
_lock = threading.RLock()


def _defer(name: str) -> None:
    """Register package ``name`` in ``sys.modules`` without running its ``__init__`` (see the module docstring)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)  # the parent is registered already: this runs no package code
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an importable package")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    state = {"initialised": False}

    def __getattr__(attr: str) -> Any:
        if attr.startswith("_"):  # dunder and private probes (inspect, pytest, copy) never load the package
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        with _lock:
            if importlib.util.find_spec(f"{name}.{attr}") is not None:
                return importlib.import_module(f"{name}.{attr}")
            if not state["initialised"]:
                state["initialised"] = True
                loader.exec_module(module)  # the package's real __init__, into this module object
                if attr in module.__dict__:
                    return module.__dict__[attr]
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


with _lock:
    for _name in _DEFERRED:
        _defer(_name)
    # What the real ``kubernetes_asyncio.client.__init__`` would have bound besides the generated classes, so that
    # ``from kubernetes_asyncio.client import ApiClient, Configuration`` (the kubeconfig loader does it) finds them.
    _client = sys.modules["kubernetes_asyncio.client"]
    for _submodule, _names in (
        ("exceptions", ("OpenApiException", "ApiTypeError", "ApiValueError", "ApiKeyError", "ApiAttributeError",
                        "ApiException")),
        ("configuration", ("Configuration",)),
        ("rest", ()),
        ("api_client", ("ApiClient",)),
    ):
        _module = importlib.import_module(f"kubernetes_asyncio.client.{_submodule}")
        for _attr in _names:
            if _attr not in _client.__dict__:
                setattr(_client, _attr, getattr(_module, _attr))

from kubernetes_asyncio.client.api_client import ApiClient  # noqa: E402  (after the packages are deferred)
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402
from kubernetes_asyncio.config.config_exception import ConfigException  # noqa: E402
from kubernetes_asyncio.config.incluster_config import load_incluster_config  # noqa: E402
from kubernetes_asyncio.config.kube_config import KubeConfigLoader  # noqa: E402


def generated_classes_loaded(modules: dict[str, ModuleType] | None = None) -> list[str]:
    """The packages of generated classes of which some module has been imported into ``modules`` (default
    ``sys.modules``); empty while the daemon keeps to this module."""
    modules = sys.modules if modules is None else modules
    return [name for name in GENERATED_PACKAGES if any(key.startswith(name + ".") for key in modules)]
