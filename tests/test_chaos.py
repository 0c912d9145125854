"""A short fault campaign (``chaos``) per backend: no violation, real faults.

The full campaign is ``nox -s chaos`` (60 s per backend, several seeds).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from chaos.campaign import run_campaign
from tests.servers import require_binary

SEED = 12
DURATION = 12.0


@pytest.mark.parametrize("backend", ["etcd", "redis"])
async def test_short_campaign_is_safe(backend: str, tmp_path: Path) -> None:
    require_binary("etcd" if backend == "etcd" else "redis-server")
    result = await run_campaign(backend, SEED, DURATION, directory=tmp_path)
    print(result.markdown())
    assert result.check.ok, result.check
    assert result.check.operations > 500, result.check
    kinds = Counter(fault.kind for fault in result.faults)
    assert len(kinds) >= 4, kinds
    assert any(kind.startswith("candidate-") for kind in kinds), kinds
    assert any(not kind.startswith("candidate-") for kind in kinds), kinds
    assert result.recovered, "a resource was not worked on again after healing"
    assert not result.leftover, result.leftover
    assert min(result.availability.values()) > 0.3, result.availability
