from pathlib import Path

import pytest

from loki_async import config
from loki_async.errors import ConfigError
from loki_async.modules import TARGETS, resolve


def load(argv: list[str]) -> config.Config:
    return config.load(config.parse_args(argv))


def test_defaults_match_loki() -> None:
    cfg = config.Config()
    assert cfg.server.http_listen_port == 3100
    assert cfg.server.http_listen_address == "127.0.0.1"
    assert cfg.limits_config.max_line_size == 256 * 1024
    assert cfg.limits_config.max_label_names_per_series == 15
    assert cfg.limits_config.reject_old_samples_max_age_s == 7 * 86400
    assert cfg.auth_enabled is False
    assert cfg.wal_dir == Path("data/wal")


def test_yaml_uses_loki_keys_with_units_parsed(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("""
auth_enabled: true
server: {http_listen_port: 4100}
common: {path_prefix: /tmp/x}
limits_config:
  max_line_size: 1MB
  reject_old_samples_max_age: 2d
  ingestion_rate_mb: 8
ingester:
  max_chunk_age: 1h30m
  wal: {dir: /tmp/wal}
""")
    cfg = load([f"-config.file={p}"])
    assert cfg.auth_enabled
    assert cfg.server.http_listen_port == 4100
    assert cfg.limits_config.max_line_size == 1 << 20
    assert cfg.limits_config.reject_old_samples_max_age_s == 2 * 86400
    assert cfg.ingester.max_chunk_age_s == 5400
    assert cfg.wal_dir == Path("/tmp/wal")
    assert cfg.chunks_dir == Path("/tmp/x/chunks")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("""
server: {http_listen_port: abc, nope: 1}
limits_config: {max_line_size: huge}
bogus_section: {}
ingester: {max_chunk_age: 5 minutes}
""")
    with pytest.raises(ConfigError) as e:
        load([f"-config.file={p}"])
    msg = e.value.message
    assert "server.http_listen_port: expected an integer" in msg
    assert "server: field nope not found" in msg
    assert "limits_config.max_line_size: not a valid size" in msg
    assert "top level: field bogus_section not found" in msg
    assert "ingester.max_chunk_age" in msg


def test_flags_override_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("server: {http_listen_port: 4100}\n")
    cfg = load(
        [
            f"-config.file={p}",
            "-server.http-listen-port=4200",
            "-auth.enabled",
            "-common.path-prefix",
            "/srv/loki",
            "-ingester.max-chunk-age=3h",
        ]
    )
    assert cfg.server.http_listen_port == 4200
    assert cfg.auth_enabled is True
    assert cfg.common.path_prefix == "/srv/loki"
    assert cfg.ingester.max_chunk_age_s == 3 * 3600


def test_unknown_flag_and_target_are_errors() -> None:
    with pytest.raises(ConfigError, match="flag provided but not defined: -nope"):
        config.parse_args(["-nope=1"])
    with pytest.raises(ConfigError, match="unknown target 'reader'"):
        load(["-target=reader"])


def test_print_config_round_trips() -> None:
    cfg = load(["-ingester.chunks-idle-period=45m", "-distributor.max-line-size=512KB"])
    again = config.load_yaml_text(config.dump(cfg))
    assert again == cfg


def test_durations_and_sizes() -> None:
    assert config.parse_duration("1w") == 604800
    assert config.parse_duration("1h30m") == 5400
    assert config.parse_duration("250ms") == 0.25
    assert config.format_duration(5400) == "1h30m"
    assert config.parse_size("256KB") == 262144
    assert config.parse_size("1MiB") == 1 << 20
    with pytest.raises(ValueError):
        config.parse_duration("5 minutes")


def test_targets_resolve_dependencies_first() -> None:
    assert resolve("all") == [
        "nats",
        "ring",
        "distributor",
        "store",
        "ingester",
        "querier",
        "query-frontend",
        "querier-worker",
    ]
    read = ["nats", "store", "ring", "querier", "query-frontend", "querier-worker"]
    assert resolve("read") == read
    assert resolve("read", workers=False) == read[:-1]
    assert resolve("querier-worker", workers=False)[-1] == "querier-worker"
    assert set(TARGETS) >= {
        "all",
        "read",
        "write",
        "distributor",
        "ingester",
        "query-frontend",
        "querier-worker",
    }


def test_operations_doc_holds_the_generated_config_reference() -> None:
    """docs/operations.md's reference is the one generated from the dataclasses:
    regenerate it with ``python3 -m loki_async.config`` after changing a field."""
    from loki_async.config import reference_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    marker = "<!-- config-reference:start -->\n"
    start = doc.index(marker) + len(marker)
    end = doc.index("<!-- config-reference:end -->")
    assert doc[start:end].strip() == reference_markdown().strip()
    # Every flag of the program is in it.
    for flag in config.FLAGS:
        assert f"`-{flag}`" in doc, flag
