#!/usr/bin/env python3
"""Querier worker process: ``loki-async -target=querier-worker`` with any further flags.

    python3 workers/querier_worker.py -config.file=config.yaml

Start as many as there are cores to spare, on any machine that reaches NATS and the
object store; they share the work of every async query (see docs/async-queries.md).
"""

from __future__ import annotations

import sys

from loki_async.cli import main

if __name__ == "__main__":
    sys.exit(main(["-target=querier-worker", *sys.argv[1:]]))
