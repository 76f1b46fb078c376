"""Crash faults under load (``loki_async.chaos``, also ``loki-async bench chaos``): every
kind of process is killed with SIGKILL while 4 pushers and 2 queriers run, then
restarted. No acknowledged line may be lost, and once the killed process is back every
push and query succeeds.

The CI run keeps each phase to two seconds; ``LOKI_ASYNC_RELIABILITY=long`` runs the
phases of docs/reliability.md (10 s, 10 s, 20 s).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loki_async.chaos import FAULTS, Outcome, Timing, run
from tests.reliability.scale import LONG

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TIMING = Timing(10, 10, 20) if LONG else Timing(2, 2, 2)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    workdir = tmp_path_factory.mktemp("chaos")
    return {o.fault: o for o in asyncio.run(run(list(FAULTS), Path(workdir), TIMING))}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_acknowledged_line_is_lost_and_service_resumes(
    outcomes: dict[str, Outcome], fault: str
) -> None:
    o = outcomes[fault]
    assert o.lines_acked > 0, o
    assert o.lines_lost == 0, o
    assert o.lines_duplicated == 0, o
    # After the restart every push and every query succeeds, and no async query
    # submitted at any time was lost.
    assert o.pushes_failed_after == 0, o
    assert o.queries_failed_after == 0, o
    assert o.async_queries > 0 and o.async_queries_failed == 0, o
    assert not any("exit codes" in n for n in o.notes), o


def test_the_faults_took_effect(outcomes: dict[str, Outcome]) -> None:
    """The harness really killed what it says: pushes failed while the only
    distributor (or the single process) was down, queries while the only frontend was."""
    assert outcomes["all-in-one"].pushes_failed_during > 0
    assert outcomes["distributor"].pushes_failed_during > 0
    assert outcomes["query-frontend"].queries_failed_during > 0
    # Replicated parts hide the fault from clients.
    for fault in ("ingester", "querier-worker"):
        assert outcomes[fault].pushes_failed_during == 0, outcomes[fault]


def test_chunks_flush_once_s3_returns(outcomes: dict[str, Outcome]) -> None:
    notes = outcomes["s3"].notes
    assert notes[0].startswith("/flush while S3 was down: 5"), notes
    assert notes[1] == "/flush after S3 returned: 204", notes
