"""What the server snapshot holds per server: ``python -m bench.serverstore --servers 2000``.

The emulator's answer to ``GET /servers/detail/`` for N servers shaped like the benchmark's (one public DHCP NIC
with its runtime lease, the meta a Cluster API provider writes, one tag, owner, every other field of the API's
server object) is decoded and parsed exactly as :class:`cloudsigma.client.CloudSigmaClient` does, turned into a
:class:`ccm.servercache.ServerSnapshot`, and each server's addresses are extracted once (what the first reconcile
of its Node does). Reported: the Python allocations still alive once the decoded JSON is gone (``tracemalloc``),
per server, and the biggest sources of it. No network, no daemon: a quick, quiet measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

from bench.cloud import USER_EMAIL, seed


def listing_json(n: int) -> bytes:
    """The body of ``GET /servers/detail/`` for ``n`` benchmark servers, as the emulator renders it."""
    from tests.emulator.state import EmulatorState

    state = EmulatorState()
    state.load_seed(seed(n, token_lifetime=300))
    return json.dumps({"meta": {"total_count": n}, "objects": state.servers_of(USER_EMAIL)}).encode()


def _short(filename: str) -> str:
    """``.../site-packages/pydantic/main.py`` → ``pydantic/main.py``; the repository's and the standard
    library's files likewise relative."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    root = str(Path(__file__).resolve().parents[1]) + "/"
    if filename.startswith(root):
        return filename[len(root):]
    return "/".join(Path(filename).parts[-2:])


def measure(n: int, top: int = 8) -> dict[str, Any]:
    from ccm.servercache import ServerSnapshot
    from cloudsigma.client import ServerList, _parse_servers

    body = listing_json(n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    objects = json.loads(body)["objects"]
    servers, invalid = _parse_servers(objects)
    del objects
    listing = ServerList(tuple(servers), total_count=len(servers), request_ids=(), fetched_at=0.0)
    snapshot = ServerSnapshot.from_list(listing, fetched_at=0.0)
    del listing
    del servers
    for server in snapshot.servers:
        snapshot.addresses(server)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "filename")
    held = sum(s.size_diff for s in stats)
    top_files = [{"file": _short(s.traceback[0].filename), "bytes_per_server": round(s.size_diff / n)}
                 for s in stats[:top]]
    return {"servers": n, "invalid": len(invalid), "bytes_per_server": round(held / n),
            "json_bytes_per_server": round(len(body) / n), "top": top_files, "snapshot": snapshot}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serverstore", description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=2000)
    args = p.parse_args(argv)
    result = measure(args.servers)
    result.pop("snapshot")
    print(f"{result['servers']} servers ({result['json_bytes_per_server']} B of JSON each): "
          f"{result['bytes_per_server'] / 1024:.2f} KiB held per server", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
