"""What verifying an impersonated token costs per acquisition, next to the exchange that produced it.

    .venv/bin/python -m bench.verify_cost [--rounds 200]

Starts the real Keycloak of the tests (scripts/fetch-keycloak.sh), then for each round: one legacy token exchange
through the CCM's provider (the reference, measured in the same run) and the CCM's verification of the token it
returned (signature against the cached JWKS, times, issuer, subject). Also the first verification of a fresh
verifier, which fetches the OIDC metadata and the JWKS. Prints a table; the figures are wall-clock on whatever
machine runs it, so the ratio to the exchange is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from ccm.config import load_settings
from credentials.factory import build_verifier
from credentials.registry import create_provider
from tests.realenv.keycloak import Keycloak

USER = "bench-user@example.com"


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{statistics.median(values):8.3f} {p95:8.3f}"


async def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as work:
        keycloak = Keycloak(Path(work))
        await keycloak.start()
        try:
            await keycloak.add_user(USER, "bench-password-1")
            settings = load_settings({
                "region": "zrh", "impersonation_enabled": True, "oauth_url": keycloak.issuer,
                "client_id": keycloak.client_id, "client_secret": keycloak.client_secret,
                "token_audience": keycloak.audience, "user_email": USER,
            })
            provider = create_provider("keycloak-token-exchange", settings)
            verifier = build_verifier(settings)
            assert verifier is not None
            cold_ms: list[float] = []
            exchange_ms: list[float] = []
            verify_ms: list[float] = []
            for i in range(rounds + 5):
                t0 = time.perf_counter()
                credential = await provider.acquire(USER, "zrh")
                t1 = time.perf_counter()
                if i < 5:  # a fresh verifier each time: metadata + JWKS fetch + verification
                    fresh = build_verifier(settings)
                    assert fresh is not None
                    t2 = time.perf_counter()
                    await fresh.verify(credential.secret.get_secret_value(), requested_user=USER, provider="bench")
                    cold_ms.append((time.perf_counter() - t2) * 1000)
                    await fresh.aclose()
                    if i == 0:
                        await verifier.verify(credential.secret.get_secret_value(), requested_user=USER,
                                              provider="bench")
                    continue
                t2 = time.perf_counter()
                result = await verifier.verify(credential.secret.get_secret_value(), requested_user=USER,
                                               provider="bench")
                t3 = time.perf_counter()
                assert result.status == "verified" and not result.keys_refreshed
                exchange_ms.append((t1 - t0) * 1000)
                verify_ms.append((t3 - t2) * 1000)
            await provider.aclose()
            await verifier.aclose()
        finally:
            await keycloak.stop()
    ratio = statistics.median(verify_ms) / statistics.median(exchange_ms)
    print(f"Keycloak {keycloak_version()} legacy token exchange, {rounds} rounds (RS256, 2048-bit key)")
    print(f"{'per acquisition':44} {'median':>8} {'p95':>8}  ms")
    print(f"{'token exchange (reference)':44} {_ms(exchange_ms)}")
    print(f"{'verification, keys cached':44} {_ms(verify_ms)}")
    print(f"{'verification, first (metadata + JWKS fetch)':44} {_ms(cold_ms)}")
    print(f"verification / exchange (median): {ratio:.3f}")


def keycloak_version() -> str:
    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch-keycloak.sh"
    for line in script.read_text().splitlines():
        if line.startswith("KEYCLOAK_VERSION="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
