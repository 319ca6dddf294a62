"""The robustness section of docs/reliability.md (appended by ``tests/reliability/registry.render_markdown``):
the invariants and the menu come from the code; the caught mutants and soak figures from the last runs, by hand."""

from __future__ import annotations

from tests.robustness.observer import INVARIANTS
from tests.robustness.schedule import EXTRA, MENU

WHAT = {
    "register": "a kubelet registers a Node: with or without systemUUID; only public addresses, a VLAN InternalIP "
                "of its own (posted a moment later), or `provided-node-ip`",
    "delete_node": "the Node is deleted", "reregister": "deleted and registered again under the same name, maybe on "
                                                        "another VM of that name",
    "ready": "Ready <-> NotReady", "reboot": "kubelet restart: new bootID, sometimes a new DHCP address",
    "create_server": "a server (sometimes with a VLAN NIC)", "stop_server": "stopped (its kubelet NotReady)",
    "start_server": "started (its kubelet reboots)", "delete_server": "deleted (its kubelet NotReady)",
    "replace_vm": "deleted and created again under the same name", "change_ip": "new DHCP lease",
    "change_meta": "meta changed", "change_tags": "tags changed", "move_host": "moved to another host",
    "outage": "every API call 503 for 1-6 s", "rate_limit": "1-6 calls 429 with Retry-After 1-3 s",
    "slow": "every answer 0.3-1.5 s late for 2-8 s",
    "proxy_404": "an HTML 404 without X-REQUEST-ID from a proxy, for 4-15 s: on every /servers/ path, or on the "
                 "GETs of single servers only (the listing healthy)",
    "kill_leader": "SIGKILL of the Lease holder, restarted 0.5-4 s later", "pause_leader": "SIGSTOP of the Lease "
                                                                                          "holder, SIGCONT 1-3 s or "
                                                                                          "7-12 s later (lease 6 s)",
    "restart_apiserver": "the kube-apiserver restarted (0-3 s down); etcd compacts every second and the watch "
                         "cache is off, so resumed watches expire (410)",
    "idle": "nothing",
    "wrong_location": "the API URL answers as another location for 5-12 s (a misrouted DNS name or load balancer): "
                      "the same user has an account there with none of the cluster's servers, so every GET of one "
                      "is CloudSigma's own 404 `notexist` with a request id",
    "token_revoked": "the identity provider's signing key rotated: every token issued so far answers 401 (tokens "
                     "also expire every 20 s all through the run)",
    "idp_down": "the identity provider answers 503 for 5-25 s, half the time with the tokens in use revoked first: "
                "the password fallback answers meanwhile (and proves nothing for a deletion)",
}

#: Re-introduced bugs (tests/robustness/mutants.py) and the seeds that caught them (24 steps, on this machine).
CAUGHT = (
    ("no-account-check", "deletion on a genuine 404 from a wrong location/account (no account verdict, no fresh "
                         "listing holding another Node's server)",
     "`--seed 106`: invariant 2, `rb-1: deleted while its server <uuid> exists (running)` — a NotReady Node "
     "during a `wrong_location` window. Seeds 103, 109: not caught"),
    ("any-404-is-proof", "a proxy's 404 counted as CloudSigma's notexist",
     "`--seed 101`: invariant 2, `rb-2: deleted, but the last GET of <uuid> before it was not CloudSigma's own "
     "404 to alice@example.com: status 404, fault proxy_html, user None`. Seeds 30, 52, 76, 84: not caught (the "
     "fresh listing still blocks most such deletions)"),
    ("untaint-without-ip", "a node initialized without an IP address",
     "`--seed 62`: invariant 3, `rb-1: no uninitialized taint, addresses []` — registered, then its server "
     "stopped (no DHCP address) before the CCM initialized it"),
    ("no-fence", "a deposed leader's writes (the transport does not ask the lease's fence)",
     "not caught: seeds 30 and 32 (SIGSTOP 7-12 s, beyond the 6 s lease), and a trial operation hanging the "
     "leader's management API for 9 s (seed 106): the elector stops the controllers at the renew deadline (4 s), "
     "before the lease ends, so only a write in flight at that moment needs the fence, and none was"),
    ("blind-status-write", "the address write to nodes/status without uid/resourceVersion",
     "not caught in seeds 3, 5, 6, 101, 106"),
)

#: The last `make soak` (figures by hand from its output).
SOAK = (
    ("Run", "**5 minutes** (`make soak SOAK_MINUTES=5 SEED=2412`; the 30-minute run belongs to `make bench`), this "
            "shared 2-core machine: 356 operations, then settled in 3.1 s (bound 45 s); no violation"),
    ("Checks per invariant", "1: 154, 2: 33, 3: 154, 4: 53, 5: 423, 6: 6"),
    ("Log lines / Events per minute", "105 / 3.5 (two replicas, debug level)"),
    ("CloudSigma calls per minute", "116 at rest after the run (6 Nodes), 56 before the faults (3 Nodes)"),
    ("RSS", "97-106 MiB per process once started; 5 process lives (`kill_leader` restarts them), the longest 1.5 "
            "min, so the slope within a life (+17 to +283 MiB/h) is start-up growth, not a leak figure: a leak "
            "figure needs a run without `kill_leader` or a longer life"),
)


def section() -> str:
    lines = [
        "## Robustness under random schedules",
        "",
        "A seeded random run (`tests/robustness/`; `python -m tests.robustness --seed N` replays one) drives two "
        "`cloudsigma-ccm` processes on one Lease against a real kube-apiserver (audit log on) and the CloudSigma "
        "emulator with operations drawn from the menu below. An independent observer (its own Node watch, the "
        "emulator's request log, the audit log, the processes' logs and /metrics; its idea of a Node's server comes "
        "from the kubelet side, not from `ccm/nodes/matching.py`) checks the invariants while the run goes on; the "
        "first violation ends the run with the seed, the invariant, the Node, the last operations and the whole "
        "schedule. `make test` runs two fixed seeds (tests/robustness/test_robustness.py, about 2 minutes); "
        "`make soak` (also run by `make bench`) runs `SOAK_MINUTES` (30) with a random seed. The replicas take "
        "impersonated tokens from the emulator's OAuth side, with the owner's password as the fallback, and reach "
        "the API through a router that can send them to another location.",
        "",
        "Invariants:",
        "",
    ]
    lines += [f"{n}. {text}" for n, text in INVARIANTS.items()]
    lines += ["", "| Operation | Weight | Group | What |", "|---|---|---|---|"]
    lines += [f"| `{kind}` | {weight} | {group} | {WHAT.get(kind, '')} |" for kind, weight, group in MENU]
    lines += [f"| `{kind}` | {chance:.0%} after each | {group} | {WHAT.get(kind, '')} |"
              for kind, chance, group in EXTRA]
    lines += ["", "Re-introduced bugs the run catches (`python -m tests.robustness --mutant NAME --seed N`):", "",
              "| Mutant | Bug | Caught by |", "|---|---|---|"]
    lines += [f"| `{name}` | {bug} | {seeds} |" for name, bug, seeds in CAUGHT]
    lines += ["", "Last soak (`make soak`, 5 minutes):", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in SOAK]
    lines += ["", "Found so far:", "",
              "- a Node that reports a systemUUID whose server is gone was matched by name to a *new* server of "
              "that name (invariant 1; `--seed 5 --steps 60`, `--seed 6 --steps 60`); fixed by the fresh-evidence "
              "change (a providerID only from evidence that cannot be older than the Node): seed 6 passes since, "
              "seed 5 now stops on the next finding;",
              "- a Node *without* a systemUUID whose VM is replaced under the same name before the CCM first "
              "looked (an IdP outage, a stopped server, a `wrong_location` window delayed it) gets the new VM's "
              "providerID by name (invariant 1; `--seed 5 --steps 60`, once also `--seed 90`: timing-dependent). "
              "Open: nothing in a listing says the new server was created after the Node registered.", ""]
    lines += ["Operations with a chance are drawn from streams of their own (one per operation), so adding them "
              "kept every older seed's kubelet, cloud and process history. `make soak` (`--keep-going`) notes each "
              "violation and goes on, then fails listing them all with the figures.", ""]
    return "\n".join(lines)
