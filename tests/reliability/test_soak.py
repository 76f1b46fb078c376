"""Soak: mixed push, query and async load on one ``-target=all`` process, with its
memory, open files and event-loop tasks sampled (``loki_async.soak``, also
``loki-async bench soak``). Two minutes in CI; ``LOKI_ASYNC_RELIABILITY=long`` runs the
30 minutes of docs/reliability.md.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loki_async.soak import Report, Sample, judge, soak, svg_plot
from tests.reliability.scale import LONG

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_nothing_grows_and_nothing_is_lost_under_mixed_load(tmp_path: Path) -> None:
    report = asyncio.run(soak(tmp_path, minutes=30 if LONG else 2))
    assert report.lines_acked > 0 and report.async_queries > 0
    assert not report.problems, report.problems
    (tmp_path / "soak.svg").write_text(svg_plot(report))


def _report(rss: list[float], fds: int = 10, tasks: int = 40) -> Report:
    r = Report(1.0, lines_acked=5, lines_stored=5)
    r.samples = [Sample(i * 5.0, m, fds, tasks, 5) for i, m in enumerate(rss)]
    return r


def test_the_judge_catches_growth_loss_and_failures() -> None:
    steady = _report([60, 70, 72, 71, 73, 72, 74, 72, 73, 72])
    judge(steady)
    assert steady.problems == []
    leaking = _report([60, 70, 80, 95, 110, 130, 150, 170, 190, 210])
    judge(leaking)
    assert any("memory grew" in p for p in leaking.problems)
    lost = _report([60] * 10)
    lost.lines_stored = 4
    judge(lost)
    assert lost.problems == ["5 lines acknowledged, 4 stored"]
    fds = _report([60] * 10)
    fds.samples[-1].fds = 100
    judge(fds)
    assert any("open files grew" in p for p in fds.problems)
