"""Doctor (placeholder until written)."""
from __future__ import annotations

from ccm.config import Settings
from ccm.logging import Redactor


async def run_doctor(settings: Settings, redactor: Redactor, *, output: str = "table") -> int:
    raise NotImplementedError("doctor is not implemented yet")

