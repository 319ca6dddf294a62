"""Render kustomizations with the real ``kustomize`` (built from the Go module proxy by scripts/build-kustomize.sh,
cached per machine, like the test kube-apiserver) — what ``kubectl apply -k`` does, not an imitation of it.

``$CCM_KUSTOMIZE_BIN`` names a prebuilt binary instead (it must be kustomize v5).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.realenv.gotools import go_tool_binary

__all__ = ["KustomizeError", "find_object", "kustomize_binary", "object_id", "render"]

Obj = dict[str, Any]


class KustomizeError(RuntimeError):
    """kustomize could not be built, or refused a kustomization."""


@functools.cache
def kustomize_binary() -> Path:
    """The kustomize binary: ``$CCM_KUSTOMIZE_BIN``, else the build script's (cached) output."""
    return go_tool_binary("build-kustomize.sh", "CCM_KUSTOMIZE_BIN", KustomizeError, timeout=900)


def render(directory: str | Path) -> list[Obj]:
    """``kustomize build directory``: the objects in the order kustomize prints them."""
    proc = subprocess.run([str(kustomize_binary()), "build", str(directory)], capture_output=True, text=True,
                          check=False, timeout=120)
    if proc.returncode != 0:
        raise KustomizeError(f"kustomize build {directory}: {proc.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj is not None]


def object_id(obj: Obj) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): what identifies an object in a rendering."""
    meta = obj.get("metadata") or {}
    return (str(obj.get("apiVersion", "")), str(obj.get("kind", "")), str(meta.get("namespace") or ""),
            str(meta.get("name", "")))


def find_object(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    """The one object of ``kind`` named ``name``; ``KeyError`` if there is none."""
    for obj in objects:
        if obj.get("kind") == kind and (obj.get("metadata") or {}).get("name") == name:
            return obj
    raise KeyError(f"no {kind} {name!r} in the rendering")
