"""A real S3-compatible server for tests: SeaweedFS's single-process ``weed mini``.

``start_weed`` (in :mod:`loki_async.processes`, shared with ``loki-async cluster``) runs
it on free loopback ports with its data, logs and local sockets in a temporary
directory; ``s3_server`` is the session fixture that yields the endpoint URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loki_async.processes import free_ports, start_weed, weed_binary  # noqa: F401


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a `weed mini` S3 server shared by the whole session."""
    endpoint, stop = start_weed(tmp_path_factory.mktemp("weed"))
    yield endpoint
    stop()
