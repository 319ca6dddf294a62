"""The schedule of a robustness run: a pure function of the seed.

:func:`generate` draws operations from a weighted menu (:data:`MENU`) against an abstract model of the world it
keeps itself (which names have servers, which servers run, which Nodes are registered). Servers are named by
abstract ids (``s1``, ``s2``...) that the executor maps to real uuids, so the same seed gives the same schedule
byte for byte, whatever the system under test does with it; an operation the real world no longer allows (say,
the CCM deleted the Node meanwhile) is skipped by the executor and logged as such.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

#: (operation, weight, group). Groups are what docs/reliability.md lists; weights favour what invariants 1-3 need.
MENU: tuple[tuple[str, int, str], ...] = (
    ("register", 10, "kubelet"),        # a Node: with/without systemUUID; public only, VLAN address, provided-node-ip
    ("delete_node", 3, "kubelet"),      # the Node deleted (an operator, a scale-down)
    ("reregister", 4, "kubelet"),       # deleted and registered again under the same name (maybe on a new VM)
    ("ready", 4, "kubelet"),            # Ready <-> NotReady
    ("reboot", 4, "kubelet"),           # new bootID, sometimes a new DHCP address
    ("create_server", 6, "cloud"),
    ("stop_server", 3, "cloud"),
    ("start_server", 4, "cloud"),
    ("delete_server", 3, "cloud"),
    ("replace_vm", 4, "cloud"),         # a VM deleted and created again under the same name
    ("change_ip", 2, "cloud"),
    ("change_meta", 1, "cloud"),
    ("change_tags", 1, "cloud"),
    ("move_host", 1, "cloud"),
    ("outage", 2, "cloud-fault"),       # every call answers 503 for a while
    ("rate_limit", 2, "cloud-fault"),   # 429 with Retry-After
    ("slow", 3, "cloud-fault"),         # every answer late for a while
    ("proxy_404", 4, "cloud-fault"),    # an HTML 404 from a proxy in front of the API: /servers/..., or GETs of one
    ("kill_leader", 2, "process"),      # SIGKILL; restarted after a while, as the kubelet restarts a pod
    ("pause_leader", 2, "process"),     # SIGSTOP, SIGCONT later (beyond the lease, sometimes)
    ("restart_apiserver", 1, "process"),  # the tenant (and management) kube-apiserver, with watch expiry after
    ("idle", 3, "-"),
)

#: Operations added after the first menu: drawn from a stream of their own (:func:`generate`) and slotted in
#: between the first menu's operations, so a seed's kubelet, cloud and process history stays what it was (and each
#: added operation has a stream of its own, so adding one moves none of the others).
#: (operation, chance after each operation, group).
EXTRA: tuple[tuple[str, float, str], ...] = (
    ("wrong_location", 0.06, "cloud-fault"),  # the API URL answers as another location (misrouted DNS/LB) a while
    ("token_revoked", 0.05, "credentials"),   # every token issued so far stops verifying (401): a new one is needed
    ("idp_down", 0.05, "credentials"),        # the identity provider answers 503 for a while: the fallback in use
)

NAMES = tuple(f"rb-{i}" for i in range(6))
#: Servers with registered Nodes before the faults start: the first ``2 * INITIAL_NODES`` operations.
INITIAL_NODES = 3


@dataclass(frozen=True)
class Op:
    step: int
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    #: Seconds to wait after this operation before the next one.
    then: float = 0.0

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"#{self.step:03d} {self.kind} {args}".rstrip() + f" (+{self.then:.2f}s)"

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "args": self.args, "then": self.then}


@dataclass
class _Model:
    """What the generator believes: servers by abstract id, Nodes by name (with the server they run on)."""

    servers: dict[str, tuple[str, bool]] = field(default_factory=dict)  # sid -> (name, running)
    nodes: dict[str, str] = field(default_factory=dict)  # name -> host sid
    next_sid: int = 0

    def new_sid(self) -> str:
        self.next_sid += 1
        return f"s{self.next_sid}"

    def of_name(self, name: str) -> list[str]:
        return [sid for sid, (n, _) in self.servers.items() if n == name]

    def running(self, name: str) -> list[str]:
        return [sid for sid, (n, up) in self.servers.items() if n == name and up]


def _address_mode(rng: random.Random) -> str:
    return rng.choices(["public", "vlan", "provided"], weights=[4, 4, 2])[0]


def _pick(rng: random.Random, items: list[str]) -> str | None:
    return rng.choice(sorted(items)) if items else None


def initial(rng: random.Random, model: _Model, count: int) -> list[Op]:
    """A few servers with registered Nodes before the faults start (the rest rate is measured on these)."""
    ops: list[Op] = []
    for name in NAMES[:count]:
        sid = model.new_sid()
        model.servers[sid] = (name, True)
        ops.append(Op(len(ops), "create_server", {"name": name, "sid": sid, "vlan": False}))
        model.nodes[name] = sid
        ops.append(Op(len(ops), "register", {"name": name, "host": sid, "system_uuid": True,
                                             "addresses": "public", "status_after": 0.0}))
    return ops


def _draw(rng: random.Random, model: _Model, kind: str) -> dict[str, Any] | None:
    """Arguments for ``kind`` against the model (and the model updated), or None when it makes no sense now."""
    if kind == "register":
        free = [n for n in NAMES if n not in model.nodes and model.running(n)]
        name = _pick(rng, free)
        if name is None:
            return None
        host = rng.choice(sorted(model.running(name)))
        model.nodes[name] = host
        return {"name": name, "host": host, "system_uuid": rng.random() < 0.6, "addresses": _address_mode(rng),
                "status_after": round(rng.uniform(0, 0.4), 2)}
    if kind in ("delete_node", "ready", "reboot"):
        name = _pick(rng, list(model.nodes))
        if name is None:
            return None
        if kind == "delete_node":
            del model.nodes[name]
            return {"name": name}
        if kind == "ready":
            return {"name": name, "ready": rng.random() < 0.5}
        return {"name": name, "new_ip": rng.random() < 0.5}
    if kind == "reregister":
        name = _pick(rng, [n for n in model.nodes if model.running(n)])
        if name is None:
            return None
        host = rng.choice(sorted(model.running(name)))
        model.nodes[name] = host
        return {"name": name, "host": host, "system_uuid": rng.random() < 0.5, "addresses": _address_mode(rng),
                "status_after": round(rng.uniform(0, 0.4), 2), "pause": round(rng.uniform(0, 1.0), 2)}
    if kind == "create_server":
        name = rng.choice(NAMES)
        sid = model.new_sid()
        model.servers[sid] = (name, True)
        return {"name": name, "sid": sid, "vlan": rng.random() < 0.5}
    if kind in ("stop_server", "start_server", "delete_server", "change_ip", "change_meta", "change_tags",
                "move_host"):
        want = {"stop_server": True, "start_server": False, "change_ip": True}.get(kind)
        picked = _pick(rng, [s for s, (_, up) in model.servers.items() if want is None or up == want])
        if picked is None:
            return None
        sid = picked
        name, _ = model.servers[sid]
        if kind == "stop_server":
            model.servers[sid] = (name, False)
        elif kind == "start_server":
            model.servers[sid] = (name, True)
        elif kind == "delete_server":
            del model.servers[sid]
        return {"sid": sid, "name": name}
    if kind == "replace_vm":
        old = _pick(rng, list(model.servers))
        if old is None:
            return None
        name, _ = model.servers.pop(old)
        new = model.new_sid()
        model.servers[new] = (name, True)
        return {"sid": old, "name": name, "new_sid": new, "vlan": rng.random() < 0.3}
    if kind == "outage":
        return {"seconds": round(rng.uniform(1, 6), 1)}
    if kind == "rate_limit":
        return {"count": rng.randint(1, 6), "retry_after": rng.randint(1, 3)}
    if kind == "slow":
        return {"ms": rng.choice([300, 800, 1500]), "seconds": round(rng.uniform(2, 8), 1)}
    if kind == "proxy_404":
        return {"seconds": round(rng.uniform(4, 15), 1), "scope": rng.choice(["servers", "one-server"])}
    if kind == "kill_leader":
        return {"restart_after": round(rng.uniform(0.5, 4), 1)}
    if kind == "pause_leader":
        return {"seconds": round(rng.choice([rng.uniform(1, 3), rng.uniform(7, 12)]), 1)}
    if kind == "restart_apiserver":
        return {"downtime": round(rng.uniform(0, 3), 1)}
    if kind == "wrong_location":
        return {"seconds": round(rng.uniform(5, 12), 1)}
    if kind == "token_revoked":
        return {}
    if kind == "idp_down":
        return {"seconds": round(rng.uniform(5, 25), 1), "revoke": rng.random() < 0.5}
    if kind == "idle":
        return {}
    raise ValueError(f"unknown operation {kind!r}")


def generate(seed: int, steps: int, *, initial_nodes: int = INITIAL_NODES,
             menu: tuple[tuple[str, int, str], ...] = MENU, extra: tuple[tuple[str, float, str], ...] = EXTRA,
             mean_gap: float = 0.6) -> list[Op]:
    """The whole schedule of a run: the initial servers and Nodes, then ``steps`` random operations of ``menu``
    with the operations of ``extra`` slotted in (drawn from their own stream; not counted in ``steps``)."""
    rng = random.Random(seed)
    # One stream per added operation: adding another one later leaves the earlier ones where they were.
    streams = {kind: random.Random(f"{kind}-{seed}") for kind, _, _ in extra}
    model = _Model()
    ops = initial(rng, model, initial_nodes)
    kinds = [k for k, _, _ in menu]
    weights = [w for _, w, _ in menu]
    drawn = 0
    while drawn < steps:
        kind = rng.choices(kinds, weights=weights)[0]
        args = _draw(rng, model, kind)
        if args is None:
            continue
        ops.append(Op(len(ops), kind, args, then=round(rng.expovariate(1 / mean_gap), 2)))
        drawn += 1
        for extra_kind, chance, _ in extra:
            more = streams[extra_kind]
            if more.random() < chance:
                extra_args = _draw(more, model, extra_kind)
                if extra_args is not None:
                    ops.append(Op(len(ops), extra_kind, extra_args, then=round(more.expovariate(1 / mean_gap), 2)))
    return ops


def dumps(ops: list[Op]) -> str:
    return json.dumps([op.to_json() for op in ops])
