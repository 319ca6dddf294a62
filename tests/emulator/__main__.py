"""``python -m tests.emulator --host 127.0.0.1 --port N [--seed file.json] [--jwks-url URL] [--latency-ms 25]``

Prints the base URL (``http://HOST:PORT``) on one line once listening; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .server import EmulatorServer
from .state import EmulatorState


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.emulator", description="CloudSigma API 2.0 emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (the printed URL tells which)")
    p.add_argument("--seed", help="JSON seed file: users, clients, ips, servers, settings")
    p.add_argument("--jwks-url", help="also accept bearer tokens signed by keys from this JWKS URL")
    p.add_argument("--external-issuer", help="required 'iss' of tokens verified through --jwks-url")
    p.add_argument("--latency-ms", type=float, default=None, help="latency added to every request")
    p.add_argument("--token-lifetime", type=int, default=None, help="seconds; default 300")
    p.add_argument("--realm", action="append", default=None, help="OAuth realm name(s); default cloudsigma")
    p.add_argument("--single-object-errors", action="store_true", help="error bodies as one object, not a list")
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    state = EmulatorState.from_seed_file(args.seed) if args.seed else EmulatorState()
    if args.jwks_url:
        state.jwks_url = args.jwks_url
    if args.external_issuer:
        state.external_issuer = args.external_issuer
    if args.latency_ms is not None:
        state.faults.latency_ms = args.latency_ms
    if args.token_lifetime is not None:
        state.token_lifetime = args.token_lifetime
    if args.realm:
        state.realms = set(args.realm)
    if args.single_object_errors:
        state.single_object_errors = True
    server = EmulatorServer(state, host=args.host, port=args.port, access_log=args.access_log)
    await server.start()
    print(server.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
