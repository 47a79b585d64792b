"""What the client retries, against a real ``tierstore serve``.

* A client made before its node restarted (on the same address) reaches it again at
  once: its channel keeps trying to reconnect at least every ~1.2 s, and a retried
  call outlasts that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tierstore import errors

from .conftest import ServerProcess, poll


@pytest.mark.timeout(240)
def test_a_client_reaches_its_node_again_once_it_restarted(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    node = spawn_server()
    admin = node.connect()
    admin.create_dataset("ds")
    admin.put("ds", "shard", b"x" * 10_000)
    client = node.connect(local_reads=False)
    assert len(client.get("ds", "shard")) == 10_000

    node.stop()
    with pytest.raises(errors.Unavailable):
        client.get("ds", "shard")  # its channel now reconnects with back-off
    # The outage itself (nothing to wait for): long enough for gRPC's default back-off to
    # space its reconnection attempts 4 s or more apart, after which a client made before
    # the restart kept failing for 3-8 s after the node was back.
    time.sleep(10)
    node.start(same_ports=True)
    ready = time.monotonic()
    failures: list[str] = []

    def read() -> bool:
        try:
            return len(client.get("ds", "shard")) == 10_000
        except errors.Unavailable as exc:
            failures.append(str(exc))
            return False

    poll(read, 60, "the old client to read again")
    took = time.monotonic() - ready
    # At most ~1.2 s until the channel has reconnected, and a read's retries last 1.5 s.
    assert took < 2.5, (
        f"the old client read again only {took:.1f} s after the node was back; "
        f"{len(failures)} reads failed before: {failures[-1:]}"
    )
