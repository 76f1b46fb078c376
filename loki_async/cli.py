"""The ``loki-async`` command: run a target, print the config, run a benchmark, or query."""

from __future__ import annotations

import asyncio
import signal
import sys

from . import __version__, config, failpoints, logs
from .errors import ConfigError, LokiError

USAGE = """usage: loki-async [-config.file=PATH] [-target=TARGET] [-FLAG=VALUE ...]
       loki-async -print-config | -version | -help
       loki-async bench push|query|storage|async|trace|dedup|chaos|soak [options]   (bench -h)
       loki-async query 'LOGQL' [--async] [options]   (loki-async query -h)
       loki-async ticket ID|--list [options]   (loki-async ticket -h)
       loki-async demo [--url URL] [--days 30] [--scale 1]   (30 days of logs, three queries)
       loki-async cluster [--port 3100] [--workers 2]   (the compose topology, as processes)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "cluster":
        from .topology import main as cluster_main

        return cluster_main(argv[1:])
    if argv and argv[0] in ("query", "ticket"):
        from .client import query_main, ticket_main

        return (query_main if argv[0] == "query" else ticket_main)(argv[1:])
    try:
        cmd = config.parse_args(argv)
        if cmd.help:
            from .modules import TARGETS, resolve

            print(USAGE)
            print("targets:")
            for t in TARGETS:
                print(f"  {t:<16} modules: {', '.join(resolve(t))}")
            print("\nflags (YAML path, default):")
            print(config.flag_help())
            return 0
        if cmd.version:
            print(f"loki-async, version {__version__}")
            return 0
        cfg = config.load(cmd)
        failpoints.load()
    except ConfigError as e:
        print(e.message, file=sys.stderr)
        return 1
    except ValueError as e:  # a malformed LOKI_ASYNC_FAILPOINTS
        print(e, file=sys.stderr)
        return 1
    if cmd.print_config:
        print(config.dump(cfg), end="")
        return 0
    logs.setup(cfg.server.log_level, cfg.server.log_format)
    from .modules import run

    return asyncio.run(_serve(cfg, run))


async def _serve(cfg: config.Config, run) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(cfg, stop)
    except LokiError as e:  # start-up failures a user can fix: port in use, no NATS, ...
        print(e.message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
