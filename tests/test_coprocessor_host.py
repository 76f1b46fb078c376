"""The coprocessor SDK's versions and config, and the registry: loading, API-version
checks before construction, hot reload, sessions, fail-open hook calls."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from loki_async.config import CoprocessorsConfig
from loki_async.coprocessor import (
    Narrow,
    Option,
    Skip,
    api_mismatch,
    parse_version,
    satisfies,
    validate_config,
)
from loki_async.coprocessor_host import (
    Registry,
    current,
    data_range,
    normalize,
    plan_splits,
    step_times_reading,
)
from loki_async.errors import BadRequest
from loki_async.logql import parse_expr

H = 3600 * 10**9


def test_semver_ordering_and_constraints() -> None:
    assert parse_version("1.2.0-rc.1") < parse_version("1.2.0") < parse_version("1.10.0")
    assert parse_version("2") == parse_version("2.0.0")
    assert satisfies("1.4.0", ">=1.2,<2")
    assert not satisfies("2.0.0", ">=1.2,<2")
    assert not satisfies("1.1.9", ">=1.2,<2")
    assert satisfies("1.3.1", "~=1.2") and not satisfies("2.0.0", "^1.2")
    assert satisfies("1.3.1", "1.3.1") and not satisfies("1.3.1", "!=1.3.1")
    with pytest.raises(ValueError):
        satisfies("1.0.0", ">=one")


def test_api_version_major_must_match_and_minor_not_newer() -> None:
    assert api_mismatch("1.0", "1.3.0") is None
    assert "major" in str(api_mismatch("2.0", "1.3.0"))
    assert "newer minor" in str(api_mismatch("1.4", "1.3.0"))
    assert "not a version" in str(api_mismatch("one", "1.3.0"))


def test_plugin_config_is_validated_against_its_schema() -> None:
    schema = {
        "window": Option("duration", "1h"),
        "url": Option("str", required=True),
        "tries": Option("int", 3),
    }
    values, errors, missing = validate_config(schema, {"window": "90m", "tries": "x", "oops": 1})
    assert values["window"] == 5400.0
    assert any("tries" in e and "integer" in e for e in errors)
    assert any("unknown option 'oops'" in e for e in errors)
    assert missing == ["url"]


# --------------------------------------------------------------------------- plugin files

PLUGIN = """
import asyncio
from loki_async.coprocessor import Coprocessor, Keep, Skip, Narrow, Option, declare

EVENTS = []

class P(Coprocessor):
    def __init__(self, config):
        super().__init__(config)
        EVENTS.append(("init", {version!r}))

    async def close(self):
        EVENTS.append(("close", {version!r}))

{body}

PLUGIN = declare(P, name={name!r}, version={version!r}, api={api!r}, config={config})
"""


def write_plugin(
    directory: Path,
    name: str = "demo",
    version: str = "1.0.0",
    body: str = "",
    api: str = "1.0",
    config: str = "{}",
    file: str | None = None,
) -> Path:
    path = directory / f"{file or name}.py"
    text = PLUGIN.format(
        name=name, version=version, api=api, config=config, body=textwrap.indent(body, "    ")
    )
    path.write_text(textwrap.dedent(text))
    # Hot reload looks at (mtime, size): make a rewrite within one clock tick visible.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    return path


def registry(directory: Path, **kw: object) -> Registry:
    cfg = CoprocessorsConfig(directory=str(directory), reload_interval_s=0, **kw)  # type: ignore[arg-type]
    return Registry(cfg)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def plan(
    session: object, expr: object, kind: str, end: int, step: int, splits: list[tuple[int, int]]
) -> object:
    """The planner's use of plan_splits for a query over [0, end)."""
    return await plan_splits(
        session,  # type: ignore[arg-type]
        tenant="t",
        query=str(expr),
        expr=expr,  # type: ignore[arg-type]
        kind=kind,
        query_start=0,
        query_end=end,
        step=step,
        query_id="q",
        splits=splits,
    )


SKIP_ALL = "async def pre_query(self, split):\n    return Skip('nothing here')\n"


async def test_plugins_load_at_start_and_are_listed(tmp_path: Path) -> None:
    write_plugin(tmp_path, "alpha", body=SKIP_ALL)
    write_plugin(tmp_path, "beta", version="2.1.0")
    reg = registry(tmp_path)
    await reg.start()
    try:
        listing = {p["name"]: p for p in reg.listing()}
        assert listing["alpha"]["state"] == "active"
        assert listing["alpha"]["hooks"] == ["pre_query"]
        assert listing["beta"]["version"] == "2.1.0" and listing["beta"]["hooks"] == []
    finally:
        await reg.stop()


async def test_api_mismatch_is_rejected_before_the_plugin_is_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "constructed"
    body = f"def __new__(cls, *a, **k):\n    open({str(marker)!r}, 'w').close()\n"
    body += "    return object.__new__(cls)\n"
    write_plugin(tmp_path, "future", api="2.0", body=body)
    reg = registry(tmp_path)
    await reg.start()
    try:
        [entry] = reg.listing()
        assert entry["state"] == "rejected"
        assert "major version differs" in entry["error"]
        assert not marker.exists()
        assert "future" not in reg.active()
    finally:
        await reg.stop()


async def test_a_file_that_fails_to_import_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    (tmp_path / "nodecl.py").write_text("X = 1\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    write_plugin(tmp_path, "good")
    reg = registry(tmp_path)
    await reg.start()
    try:
        listing = {p["file"]: p for p in reg.listing()}
        assert listing["broken.py"]["state"] == "failed"
        assert "nonexistent_module_xyz" in listing["broken.py"]["error"]
        assert "Traceback" in listing["broken.py"]["error"]
        assert "no PLUGIN" in listing["nodecl.py"]["error"]
        assert "SystemExit" in listing["exits.py"]["error"]
        assert listing["good.py"]["state"] == "active"
    finally:
        await reg.stop()


async def test_bad_config_fails_the_plugin_and_missing_required_option_disables_it(
    tmp_path: Path,
) -> None:
    write_plugin(tmp_path, "strict", config="{'window': Option('duration', '1h')}")
    write_plugin(tmp_path, "needy", config="{'url': Option('str', required=True)}")
    reg = registry(tmp_path, plugins={"strict": {"window": "soon"}})
    await reg.start()
    try:
        listing = {p["name"]: p for p in reg.listing()}
        assert listing["strict"]["state"] == "failed"
        assert "coprocessors.plugins.strict.window" in listing["strict"]["error"]
        assert listing["needy"]["state"] == "disabled"
        assert "coprocessors.plugins.needy.url" in listing["needy"]["error"]
    finally:
        await reg.stop()


async def test_only_enabled_plugins_run(tmp_path: Path) -> None:
    write_plugin(tmp_path, "alpha")
    write_plugin(tmp_path, "beta")
    reg = registry(tmp_path, enabled="beta")
    await reg.start()
    try:
        assert set(reg.active()) == {"beta"}
        assert {p["name"]: p["state"] for p in reg.listing()}["alpha"] == "disabled"
    finally:
        await reg.stop()


async def test_hot_reload_swaps_versions_and_running_sessions_keep_theirs(tmp_path: Path) -> None:
    write_plugin(tmp_path, "demo", version="1.0.0", body=SKIP_ALL)
    reg = registry(tmp_path)
    await reg.start()
    try:
        old = reg.active()["demo"]
        log = old.instance.__class__.__init__.__globals__["EVENTS"]
        with reg.session() as s1:
            write_plugin(tmp_path, "demo", version="1.1.0", body=SKIP_ALL)
            await reg.reload()
            assert reg.active()["demo"].version == "1.1.0"
            assert [p.version for p in s1.plugins] == ["1.0.0"]  # the running query keeps v1
            await asyncio.sleep(0)
            assert ("close", "1.0.0") not in log  # still in use
            with reg.session() as s2:
                assert [p.version for p in s2.plugins] == ["1.1.0"]
        await asyncio.sleep(0.05)
        assert ("close", "1.0.0") in log  # closed once its last session ended

        # A broken new version leaves the running one and reports the error.
        (tmp_path / "demo.py").write_text("this is not python(\n")
        await reg.reload()
        assert reg.active()["demo"].version == "1.1.0"
        [entry] = reg.listing()
        assert entry["state"] == "active" and entry["version"] == "1.1.0"
        assert "SyntaxError" in entry["error"]

        # Fixed again: loads; removed: unloaded.
        write_plugin(tmp_path, "demo", version="1.2.0")
        await reg.reload()
        assert reg.active()["demo"].version == "1.2.0"
        assert reg.listing()[0]["error"] is None
        (tmp_path / "demo.py").unlink()
        await reg.reload()
        assert reg.active() == {} and reg.listing() == []
    finally:
        await reg.stop()


async def test_the_watcher_picks_up_new_files(tmp_path: Path) -> None:
    reg = Registry(CoprocessorsConfig(directory=str(tmp_path), reload_interval_s=0.05))
    await reg.start()
    try:
        assert reg.active() == {}
        write_plugin(tmp_path, "late")
        for _ in range(100):
            if "late" in reg.active():
                break
            await asyncio.sleep(0.05)
        assert "late" in reg.active()
    finally:
        await reg.stop()


async def test_request_plugin_lists_and_version_constraints(tmp_path: Path) -> None:
    write_plugin(tmp_path, "alpha", version="1.1.0")
    write_plugin(tmp_path, "beta", version="2.0.0")
    reg = registry(tmp_path)
    await reg.start()
    try:

        def names(spec: str, constraints: str = "") -> list[str]:
            return [p.name for p in reg.session(spec, constraints).plugins]

        assert names("") == ["alpha", "beta"]
        assert names("none") == []
        assert names("-alpha") == ["beta"]
        assert names("alpha") == ["alpha"]
        assert names("", "alpha>=1.0,<2; beta>=2") == ["alpha", "beta"]
        with pytest.raises(BadRequest, match=r"alpha is version 1\.1\.0, but the request"):
            reg.session("", "alpha>=1.2,<2")
        with pytest.raises(BadRequest, match="coprocessor gamma is not loaded"):
            reg.session("", "gamma>=1")
        with pytest.raises(BadRequest, match="no coprocessor named gamma"):
            reg.session("-gamma")
        with pytest.raises(BadRequest, match="not both"):
            reg.session("alpha,-beta")
        with pytest.raises(BadRequest, match="expected a plugin name and versions"):
            reg.session("", "alpha")
        assert [p.name for p in reg.session("-gamma", strict=False).plugins] == ["alpha", "beta"]
    finally:
        await reg.stop()


MISBEHAVING = {
    "raises": "async def pre_query(self, split):\n    raise RuntimeError('boom')\n",
    "hangs": "async def pre_query(self, split):\n    await asyncio.sleep(3600)\n",
    "stubborn": (
        "async def pre_query(self, split):\n"
        "    for _ in range(50):\n"
        "        try:\n"
        "            await asyncio.sleep(0.02)\n"
        "        except asyncio.CancelledError:\n"
        "            pass\n"
        "    return Skip()\n"
    ),
    "garbage": "async def pre_query(self, split):\n    return 'skip please'\n",
    "badnarrow": "async def pre_query(self, split):\n    return Narrow(5, 1)\n",
}


def failures_counted() -> dict[str, float]:
    """Per misbehaving plugin, the pre_query calls counted with its failure's outcome."""
    outcomes = {
        "raises": "error",
        "hangs": "timeout",
        "stubborn": "timeout",
        "garbage": "invalid",
        "badnarrow": "invalid",
    }
    return {
        n: counter("loki_coprocessor_calls_total", plugin=n, hook="pre_query", outcome=o)
        for n, o in outcomes.items()
    }


async def test_misbehaving_plugins_fail_open_and_are_counted(tmp_path: Path) -> None:
    for name, body in MISBEHAVING.items():
        write_plugin(tmp_path, name, body=body)
    reg = registry(tmp_path, pre_query_timeout_s=0.05)
    await reg.start()
    expr = parse_expr('{app="a"} |= "x"')
    before = failures_counted()
    try:
        splits = [(i * H, (i + 1) * H) for i in range(4)]
        with reg.session() as s:
            planned = await plan(s, expr, "log", 4 * H, 0, splits)
        assert planned.ranges == splits  # every split kept
        assert planned.counts["raises"]["errors"] == 4
        assert planned.counts["hangs"]["timeouts"] == 4
        assert planned.counts["garbage"]["errors"] == 4
        after = failures_counted()
        assert all(after[n] - before[n] == 4 for n in before), (before, after)
    finally:
        await reg.stop()


async def test_skip_and_narrow_combine_across_plugins(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "narrower",
        body=f"async def pre_query(self, split):\n    return Narrow({H + 10}, {3 * H})\n",
    )
    write_plugin(
        tmp_path,
        "skipper",
        body=f"async def pre_query(self, split):\n"
        f"    return Skip('late') if split.start_ns >= {3 * H} else Keep()\n",
    )
    reg = registry(tmp_path)
    await reg.start()
    expr = parse_expr('{app="a"}')
    try:
        with reg.session() as s:
            assert current() is s
            planned = await plan(s, expr, "log", 4 * H, 0, [(i * H, (i + 1) * H) for i in range(4)])
        assert current() is None
        assert planned.ranges == [None, (H + 10, 2 * H), (2 * H, 3 * H), None]
        assert planned.counts["narrower"] == {
            "skipped": 2,
            "narrowed": 1,
            "errors": 0,
            "timeouts": 0,
        }
        assert planned.counts["skipper"]["skipped"] == 1
    finally:
        await reg.stop()


async def test_queries_that_make_something_of_nothing_are_never_skipped(tmp_path: Path) -> None:
    write_plugin(tmp_path, "skipper", body=SKIP_ALL)
    reg = registry(tmp_path)
    await reg.start()
    try:
        for q in (
            'absent_over_time({app="a"}[5m])',
            'sum(count_over_time({app="a"}[5m])) or vector(0)',
        ):
            expr = parse_expr(q)
            with reg.session() as s:
                planned = await plan(
                    s, expr, "metric", 2 * H, 60 * 10**9, [(0, H - 60 * 10**9), (H, 2 * H)]
                )
            assert None not in planned.ranges, q
    finally:
        await reg.stop()


def test_metric_splits_read_their_range_and_narrow_to_step_times() -> None:
    expr = parse_expr('count_over_time({app="a"}[5m] offset 1m)')
    m = 60 * 10**9
    # Step times 60m..119m read (t - 6m, t - 1m].
    assert data_range(expr, 60 * m, 119 * m, log_query=False) == (54 * m + 1, 118 * m + 1)
    # Data only in [70m, 71m): the step times whose windows see it are 71m..76m.
    assert step_times_reading(expr, 60 * m, 119 * m, m, 70 * m, 71 * m) == (71 * m, 76 * m)
    assert step_times_reading(expr, 60 * m, 119 * m, m, 200 * m, 201 * m) is None


def test_answers_are_normalized_to_the_split() -> None:
    assert normalize(Skip("x"), 0, 10) == ("skip", 0, 10)
    assert normalize(Narrow(-5, 50), 0, 10) == ("keep", 0, 10)
    assert normalize(Narrow(2, 50), 0, 10) == ("narrow", 2, 10)
    assert normalize(Narrow(20, 50), 0, 10) == ("skip", 0, 10)
    assert normalize(Narrow(2.5, 5), 0, 10)[0] == "invalid"  # type: ignore[arg-type]
    assert normalize(None, 0, 10)[0] == "invalid"


async def test_handle_maps_plugin_errors_to_statuses(tmp_path: Path) -> None:
    body = (
        "async def handle(self, request, host):\n"
        "    from loki_async.coprocessor import CoprocessorError\n"
        "    if request == b'bad':\n"
        "        raise CoprocessorError('invalid_request', 'send JSON')\n"
        "    if request == b'crash':\n"
        "        raise KeyError('x')\n"
        "    if request == b'slow':\n"
        "        await asyncio.sleep(10)\n"
        "    if request == b'str':\n"
        "        return 'not bytes'\n"
        "    return b'{\"ok\": true}'\n"
    )
    write_plugin(tmp_path, "svc", body=body)
    reg = registry(tmp_path, handle_timeout_s=0.1)
    await reg.start()
    try:
        assert await reg.handle("svc", b"hi", None) == b'{"ok": true}'  # type: ignore[arg-type]
        for req, status, text in (
            (b"bad", 400, "coprocessor svc: send JSON"),
            (b"crash", 500, "internal error KeyError"),
            (b"slow", 504, "did not answer within"),
            (b"str", 500, "not bytes"),
        ):
            with pytest.raises(Exception) as exc:
                await reg.handle("svc", req, None)  # type: ignore[arg-type]
            assert exc.value.status == status and text in exc.value.message  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="not loaded") as exc:
            await reg.handle("nope", b"", None)  # type: ignore[arg-type]
        assert exc.value.status == 404  # type: ignore[attr-defined]
    finally:
        await reg.stop()
