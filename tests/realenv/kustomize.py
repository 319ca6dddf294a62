"""A small pure-Python renderer for the subset of ``kustomize build`` that ``deploy/`` uses.

It lets the tests render the manifests on machines without ``kubectl``/``kustomize``; where ``kubectl`` exists,
tests/unit/test_deploy_render.py checks that both renderings are the same objects.

Supported (anything else raises :class:`UnsupportedKustomization`, so a manifest change that needs more is
noticed instead of being rendered wrongly):

- ``resources``: YAML files inside the kustomization directory (several documents each) and directories
  holding a ``kustomization.yaml`` (built recursively, anywhere);
- ``namespace``: set on every namespaced object; ServiceAccount subjects of (Cluster)RoleBindings follow the
  ServiceAccount of the same name when it is one of the resources (kustomize's name reference), and subjects
  named ``default`` get the namespace (kustomize's default-subjects rule);
- ``labels``: ``pairs`` on ``metadata.labels``, and with ``includeTemplates`` on pod templates too
  (``includeSelectors: true`` and ``commonLabels`` are not supported: they rewrite selectors);
- ``images``: ``name`` with ``newName``, ``newTag`` and/or ``digest``, for containers and init containers;
- ``patches``: strategic merge patches (``path`` or inline ``patch``, no ``target``), with the merge keys of
  the pod spec lists this renderer knows (see :data:`MERGE_KEYS`); ``null`` deletes a field, and an element
  ``{<key>: ..., $patch: delete}`` deletes that element of a keyed list.

Transformations run in kustomize's order: resources, patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CLUSTER_SCOPED_KINDS",
    "MERGE_KEYS",
    "UnsupportedKustomization",
    "find_object",
    "object_id",
    "render",
    "strategic_merge",
]

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"})

CLUSTER_SCOPED_KINDS = frozenset({
    "APIService", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "IngressClass",
    "MutatingWebhookConfiguration", "Namespace", "Node", "PersistentVolume", "PriorityClass", "RuntimeClass",
    "StorageClass", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
})

MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
"""List fields merged element-wise by the given key (as Kubernetes' strategic merge does for pod specs);
every other list is replaced by the patch's list."""

POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
BINDING_KINDS = frozenset({"RoleBinding", "ClusterRoleBinding"})


class UnsupportedKustomization(ValueError):
    """The kustomization uses something this renderer does not implement."""


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


def render(directory: str | Path) -> list[Obj]:
    """Build the kustomization in ``directory``; the objects in resource order."""
    return _build(Path(directory).resolve(), stack=())


# ---------------------------------------------------------------------------------------------- building


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            return path
    raise UnsupportedKustomization(f"{directory}: no kustomization.yaml")


def _load_documents(path: Path) -> list[Obj]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise UnsupportedKustomization(f"{path}: every document must be a Kubernetes object")
        if doc["kind"].endswith("List"):
            raise UnsupportedKustomization(f"{path}: List objects are not supported")
    return docs


def _build(directory: Path, stack: tuple[Path, ...]) -> list[Obj]:
    if directory in stack:
        raise UnsupportedKustomization(f"{directory}: kustomization cycle")
    kfile = _kustomization_file(directory)
    spec = yaml.safe_load(kfile.read_text()) or {}
    if not isinstance(spec, dict):
        raise UnsupportedKustomization(f"{kfile}: not a mapping")
    unknown = sorted(set(spec) - SUPPORTED_FIELDS)
    if unknown:
        raise UnsupportedKustomization(f"{kfile}: unsupported fields {unknown}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise UnsupportedKustomization(f"{kfile}: kind {spec.get('kind')!r} (components are not supported)")

    objects: list[Obj] = []
    for entry in spec.get("resources") or []:
        objects.extend(_load_resource(directory, str(entry), (*stack, directory)))
    _check_unique(objects, kfile)

    for patch in _patches(directory, spec.get("patches") or []):
        _apply_patch(objects, patch, kfile)

    sa_namespaces_before = {(o["metadata"]["name"], o["metadata"].get("namespace") or "")
                            for o in objects if o.get("kind") == "ServiceAccount"}
    namespace = spec.get("namespace")
    if namespace:
        _set_namespace(objects, str(namespace))
    _fix_service_account_subjects(objects, sa_namespaces_before)

    for label_spec in spec.get("labels") or []:
        _add_labels(objects, label_spec, kfile)

    for image in spec.get("images") or []:
        _set_image(objects, image, kfile)

    _check_unique(objects, kfile)
    return objects


def _load_resource(directory: Path, entry: str, stack: tuple[Path, ...]) -> list[Obj]:
    if "://" in entry or entry.startswith(("github.com/", "git@")):
        raise UnsupportedKustomization(f"{directory}: remote resource {entry!r}")
    path = (directory / entry).resolve()
    if path.is_dir():
        return _build(path, stack)
    if not path.is_file():
        raise UnsupportedKustomization(f"{directory}: resource {entry!r} does not exist")
    if directory not in path.parents:
        # kustomize's default load restrictor: files must be in or below the kustomization directory.
        raise UnsupportedKustomization(f"{directory}: file {entry!r} is outside the kustomization directory")
    return _load_documents(path)


def _check_unique(objects: list[Obj], kfile: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        key = object_id(obj)
        if key in seen:
            raise UnsupportedKustomization(f"{kfile}: {key} appears twice")
        seen.add(key)


# ---------------------------------------------------------------------------------------------- patches


def _patches(directory: Path, entries: list[Any]) -> list[Obj]:
    out: list[Obj] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise UnsupportedKustomization(f"{directory}: patch entries must be mappings")
        extra = sorted(set(entry) - {"path", "patch"})
        if extra:
            raise UnsupportedKustomization(f"{directory}: patch fields {extra} are not supported")
        if "path" in entry:
            path = (directory / str(entry["path"])).resolve()
            if directory not in path.parents:
                raise UnsupportedKustomization(f"{directory}: patch {entry['path']!r} is outside the directory")
            text = path.read_text()
        else:
            text = str(entry["patch"])
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc:
                raise UnsupportedKustomization(f"{directory}: only strategic merge patches are supported")
            out.append(doc)
    return out


def _apply_patch(objects: list[Obj], patch: Obj, kfile: Path) -> None:
    meta = patch.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    matches = [
        i for i, obj in enumerate(objects)
        if obj.get("kind") == patch["kind"]
        and obj["metadata"].get("name") == name
        and (namespace is None or (obj["metadata"].get("namespace") or "") == namespace)
        and ("apiVersion" not in patch or obj.get("apiVersion") == patch["apiVersion"])
    ]
    if len(matches) != 1:
        raise UnsupportedKustomization(f"{kfile}: patch for {patch['kind']} {name!r} matches {len(matches)} objects")
    objects[matches[0]] = strategic_merge(objects[matches[0]], patch)


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into (a copy of) ``target``: mappings recursively, ``null`` deletes, lists of
    :data:`MERGE_KEYS` fields element-wise by key (patch elements first, then the target's others, as
    kustomize orders them), other lists and scalars replaced."""
    if isinstance(patch, dict) and isinstance(target, dict):
        out = copy.deepcopy(target)
        for key, value in patch.items():
            if key.startswith("$"):
                raise UnsupportedKustomization(f"patch directive {key!r} is not supported")
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(target, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        by_key = {item.get(key): item for item in target if isinstance(item, dict)}
        merged: list[Any] = []
        patched: set[Any] = set()
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise UnsupportedKustomization(f"patch list {field!r}: every element needs {key!r}")
            patched.add(item[key])
            if "$patch" in item:
                if item["$patch"] != "delete" or set(item) != {key, "$patch"}:
                    raise UnsupportedKustomization(f"patch list {field!r}: only {{{key}, $patch: delete}} is "
                                                   "supported")
                continue
            base = by_key.get(item[key])
            merged.append(strategic_merge(base, item, "") if base is not None else copy.deepcopy(item))
        merged.extend(copy.deepcopy(item) for item in target
                      if not (isinstance(item, dict) and item.get(key) in patched))
        return merged
    return copy.deepcopy(patch)


# ---------------------------------------------------------------------------------------------- transformers


def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        if obj.get("kind") not in CLUSTER_SCOPED_KINDS:
            obj["metadata"]["namespace"] = namespace
        if obj.get("kind") in BINDING_KINDS:
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount" and subject.get("name") == "default":
                    subject["namespace"] = namespace


def _fix_service_account_subjects(objects: list[Obj], before: set[tuple[str, str]]) -> None:
    """Subjects naming a ServiceAccount of the rendering follow its (new) namespace."""
    now = {o["metadata"]["name"]: o["metadata"].get("namespace") or ""
           for o in objects if o.get("kind") == "ServiceAccount"}
    for obj in objects:
        if obj.get("kind") not in BINDING_KINDS:
            continue
        for subject in obj.get("subjects") or []:
            name = subject.get("name")
            if subject.get("kind") != "ServiceAccount" or name not in now:
                continue
            old = subject.get("namespace") or ""
            if ((name, old) in before or not old) and now[name]:
                subject["namespace"] = now[name]


def _add_labels(objects: list[Obj], spec: Any, kfile: Path) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("pairs"), dict):
        raise UnsupportedKustomization(f"{kfile}: labels entries need `pairs`")
    extra = sorted(set(spec) - {"pairs", "includeSelectors", "includeTemplates"})
    if extra or spec.get("includeSelectors"):
        raise UnsupportedKustomization(f"{kfile}: labels with {extra or 'includeSelectors'} are not supported")
    pairs = {str(k): str(v) for k, v in spec["pairs"].items()}
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates") and obj.get("kind") in POD_TEMPLATE_KINDS:
            template = obj.setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _split_image(image: str) -> tuple[str, str, str]:
    """``name[:tag][@digest]`` → (name, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _set_image(objects: list[Obj], spec: Any, kfile: Path) -> None:
    if not isinstance(spec, dict) or "name" not in spec:
        raise UnsupportedKustomization(f"{kfile}: images entries need `name`")
    extra = sorted(set(spec) - {"name", "newName", "newTag", "digest"})
    if extra:
        raise UnsupportedKustomization(f"{kfile}: image fields {extra} are not supported")
    for obj in objects:
        if obj.get("kind") in POD_TEMPLATE_KINDS:
            pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        elif obj.get("kind") == "Pod":
            pod = obj.get("spec") or {}
        else:
            continue
        for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
            name, tag, digest = _split_image(str(container.get("image", "")))
            if name != spec["name"]:
                continue
            name = str(spec.get("newName", name))
            if "digest" in spec:
                container["image"] = f"{name}@{spec['digest']}"
            elif "newTag" in spec:
                container["image"] = f"{name}:{spec['newTag']}"
            else:
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
