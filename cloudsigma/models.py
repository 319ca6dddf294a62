"""Typed records of the CloudSigma objects the CCM reads.

Parsing is tolerant of missing/null fields and of unknown extra fields (the API grows), and strict about
the types we rely on: a server without a string ``uuid`` is invalid, a NIC of an unexpected shape is kept
with the parts we understand. Use :func:`parse_server` and :func:`parse_tag`.

The server snapshot holds every server of the account (:mod:`ccm.servercache`), so a server is kept compact: each
record is a frozen, slotted dataclass validated by pydantic (no per-instance ``__dict__`` or fields-set), only
the fields a decision reads are kept (no ``resource_uri``), lists are tuples, and the strings that repeat across
servers (owner and tag uuids, statuses, NIC types, meta keys and values) are interned. ``python -m
bench.serverstore`` measures it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: Every record: a frozen, slotted, pydantic-validated dataclass (see the module docstring).
_CONFIG = ConfigDict(extra="ignore")


def _intern(value: Any) -> Any:
    """The one shared copy of a string that repeats across servers; anything else unchanged."""
    return sys.intern(value) if type(value) is str else value


@dataclass(frozen=True, slots=True, config=_CONFIG)
class Ref:
    """A reference to another resource (``{uuid, resource_uri}``; only the uuid is kept)."""

    uuid: str

    _uuid = field_validator("uuid", mode="after")(_intern)


def _ref_or_none(value: Any) -> Any:
    # The API sometimes sends a bare uuid string instead of a reference object.
    if isinstance(value, str):
        return {"uuid": value}
    if not isinstance(value, dict) or not isinstance(value.get("uuid"), str):
        return None
    return value


def _lenient(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Optional sub-object of an unexpected shape → None (keep the rest of the server usable)."""
    try:
        return handler(value)
    except ValidationError:
        return None


def _lenient_list(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """List of sub-objects: drop the items we cannot understand, keep the others."""
    if not isinstance(value, list):
        return ()
    kept: list[Any] = []
    for item in value:
        try:
            kept.extend(handler([item]))
        except ValidationError:
            continue
    return tuple(kept)


@dataclass(frozen=True, slots=True, config=_CONFIG)
class IPConf:
    """``ip_v4_conf`` / ``ip_v6_conf`` of a NIC: how the address is assigned."""

    conf: str | None = None
    ip: Ref | None = None

    _ip = field_validator("ip", mode="before")(_ref_or_none)
    _conf = field_validator("conf", mode="wrap")(_lenient)
    _shared = field_validator("conf", mode="after")(_intern)


@dataclass(frozen=True, slots=True, config=_CONFIG)
class NICRuntime:
    """What the running guest's NIC has: ``interface_type`` public/private and the live IPs."""

    interface_type: str | None = None
    ip_v4: Ref | None = None
    ip_v6: Ref | None = None

    _v4 = field_validator("ip_v4", "ip_v6", mode="before")(_ref_or_none)
    _type = field_validator("interface_type", mode="wrap")(_lenient)
    _shared = field_validator("interface_type", mode="after")(_intern)


@dataclass(frozen=True, slots=True, config=_CONFIG)
class NIC:
    """A server NIC: public (``ip_v4_conf``/``ip_v6_conf``) or private (``vlan``), never both."""

    mac: str | None = None
    model: str | None = None
    ip_v4_conf: IPConf | None = None
    ip_v6_conf: IPConf | None = None
    vlan: Ref | None = None
    runtime: NICRuntime | None = None

    _vlan = field_validator("vlan", mode="before")(_ref_or_none)

    _objects = field_validator("ip_v4_conf", "ip_v6_conf", "runtime", mode="wrap")(_lenient)

    @field_validator("mac", "model", mode="before")
    @classmethod
    def _str_or_none(cls, value: Any) -> Any:
        return value if isinstance(value, str) else None

    _shared = field_validator("model", mode="after")(_intern)

    @property
    def is_private(self) -> bool:
        return self.vlan is not None


@dataclass(frozen=True, slots=True, config=_CONFIG)
class RuntimeNIC:
    """An entry of the server-level ``runtime.nics`` list."""

    interface_type: str | None = None
    mac: str | None = None
    ip_v4: Ref | None = None
    ip_v6: Ref | None = None

    _ips = field_validator("ip_v4", "ip_v6", mode="before")(_ref_or_none)
    _text = field_validator("interface_type", "mac", mode="wrap")(_lenient)
    _shared = field_validator("interface_type", mode="after")(_intern)


@dataclass(frozen=True, slots=True, config=_CONFIG)
class ServerRuntime:
    """``runtime`` of a server; ``None`` on the server when it is stopped."""

    nics: tuple[RuntimeNIC, ...] = ()

    _nics = field_validator("nics", mode="wrap")(_lenient_list)


def shape_problems(payload: dict[str, Any]) -> list[str]:
    """What in a server object cannot be used (and is dropped by the lenient parsing), in words an operator can
    check against the API's answer: ``nics is not a list``, ``nic #2 is not an object``..."""
    problems: list[str] = []
    nics = payload.get("nics")
    if nics is not None and not isinstance(nics, list):
        problems.append(f"nics is not a list ({type(nics).__name__})")
    elif isinstance(nics, list):
        for index, nic in enumerate(nics):
            if not isinstance(nic, dict):
                problems.append(f"nic #{index} is not an object ({type(nic).__name__})")
                continue
            for key in ("ip_v4_conf", "ip_v6_conf", "runtime"):
                if nic.get(key) is not None and not isinstance(nic.get(key), dict):
                    problems.append(f"nic #{index} {key} is not an object")
    runtime = payload.get("runtime")
    if runtime is not None and not isinstance(runtime, dict):
        problems.append(f"runtime is not an object ({type(runtime).__name__})")
    elif isinstance(runtime, dict) and runtime.get("nics") is not None and not isinstance(runtime.get("nics"), list):
        problems.append("runtime.nics is not a list")
    return problems


@dataclass(frozen=True, slots=True, config=_CONFIG)
class Server:
    """A CloudSigma server (the fields the CCM reads)."""

    uuid: str
    name: str = ""
    status: str = "unavailable"
    cpu: int | None = None
    smp: int | None = None
    mem: int | None = None
    meta: dict[str, str] = Field(default_factory=dict)
    tags: tuple[Ref, ...] = ()
    owner: Ref | None = None
    nics: tuple[NIC, ...] = ()
    runtime: ServerRuntime | None = None
    #: Parts of the API's object that could not be used (see :func:`shape_problems`); empty when all is well.
    problems: tuple[str, ...] = ()

    _owner = field_validator("owner", mode="before")(_ref_or_none)

    @model_validator(mode="before")
    @classmethod
    def _note_problems(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = shape_problems(data)
        if problems or "problems" in data:
            data = {k: v for k, v in data.items() if k != "problems"}
            if problems:
                data["problems"] = tuple(problems)
        return data

    _runtime = field_validator("runtime", mode="wrap")(_lenient)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        # The uuid becomes spec.providerID, which can never change: accept only a real uuid.
        if not _UUID.fullmatch(value.strip()):
            raise ValueError(f"{value[:64]!r} is not a server uuid")
        return value.strip().lower()

    @field_validator("name", "status", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else value

    _shared = field_validator("status", mode="after")(_intern)

    @field_validator("cpu", "smp", "mem", mode="before")
    @classmethod
    def _int_or_none(cls, value: Any) -> Any:
        # bool is an int subclass in Python; a boolean here is wrong data, not a size.
        if isinstance(value, bool) or not isinstance(value, int | float | str | None):
            return None
        if isinstance(value, str):
            return int(value) if value.isdigit() else None
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        return value

    @field_validator("meta", mode="before")
    @classmethod
    def _meta(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return {}
        return {sys.intern(str(k)): sys.intern(str(v)) for k, v in value.items() if v is not None}

    _lists = field_validator("tags", "nics", mode="wrap")(_lenient_list)

    @property
    def owner_uuid(self) -> str | None:
        return self.owner.uuid if self.owner else None


@dataclass(frozen=True, slots=True, config=_CONFIG)
class Tag:
    """A tag (``GET /tags/``): servers carry only references to it; the name is here."""

    uuid: str
    name: str

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if not _UUID.fullmatch(value.strip()):
            raise ValueError(f"{value[:64]!r} is not a tag uuid")
        return value.strip().lower()


class InvalidObject(ValueError):
    """An object of a list could not be parsed into a model."""

    def __init__(self, message: str, *, index: int | None = None, uuid: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.uuid = uuid


_SERVER = TypeAdapter(Server)
_TAG = TypeAdapter(Tag)


def parse_server(payload: Any) -> Server:
    """Parse one server object; raise :class:`InvalidObject` with a one-line reason when it is unusable."""
    if not isinstance(payload, dict):
        raise InvalidObject(f"server object is a {type(payload).__name__}, not an object")
    try:
        return _SERVER.validate_python(payload)
    except ValidationError as exc:
        uuid = payload.get("uuid") if isinstance(payload.get("uuid"), str) else None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidObject(f"invalid server object: {where}: {first.get('msg')}", uuid=uuid) from None


def parse_tag(payload: Any) -> Tag:
    """Parse one tag object; raise :class:`InvalidObject` with a one-line reason when it is unusable."""
    if not isinstance(payload, dict):
        raise InvalidObject(f"tag object is a {type(payload).__name__}, not an object")
    try:
        return _TAG.validate_python(payload)
    except ValidationError as exc:
        uuid = payload.get("uuid") if isinstance(payload.get("uuid"), str) else None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidObject(f"invalid tag object: {where}: {first.get('msg')}", uuid=uuid) from None
