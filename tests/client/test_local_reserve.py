"""A local reader refused for a busy reader table reads through the service
(tierstore/client/local.py, tierstore/server/localreads.py).

The server grants local reads only while at most half of LMDB's reader table is taken
(docs/local-reads.md, *The reader table*). Here another process on the host holds more
than half of it, against a real ``tierstore serve`` process: the client's reads go
through gRPC, the refusal is logged once, and local reads resume once the slots are
free again — for a new client at once, for the refused one when it asks again.
"""

from __future__ import annotations

import logging
import os

import pytest

from tests.reader_slots import holding_reader_slots
from tests.server.conftest import ServerProcess, poll
from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.client.local import LocalReadOptions, ReadCounts
from tierstore.tiers.lmdb import MAX_READERS


def reader_client(server: ServerProcess) -> Client:
    settings = ChannelSettings(address=server.address, token=server.token, ca=server.ca_path)
    return Client(settings, local=LocalReadOptions())


@pytest.mark.timeout(90)
def test_a_busy_reader_table_sends_reads_through_the_service(
    server: ServerProcess, dataset: str, caplog: pytest.LogCaptureFixture
) -> None:
    blob = os.urandom(5000)
    with holding_reader_slots(server.data_dir / "hot", MAX_READERS // 2 + 1):
        with caplog.at_level(logging.INFO, logger="tierstore.client.local"):
            client = reader_client(server)
            client.put(dataset, "b", blob)
            for _ in range(3):
                assert client.get(dataset, "b").to_pybytes() == blob
            assert client.read_counts == ReadCounts(grpc=3, fallbacks=3)
        notes = [r.getMessage() for r in caplog.records if "for now" in r.getMessage()]
        assert len(notes) == 1, caplog.text
        assert "reader slots are taken" in notes[0]
    # The holder died with its slots: the server frees them before it would refuse.
    with reader_client(server) as fresh:
        assert fresh.get(dataset, "b").to_pybytes() == blob
        assert fresh.read_counts == ReadCounts(local=1)
    # The refused client asks again a few seconds later, and reads in place.
    with client:

        def local_again() -> bool:
            assert client.get(dataset, "b").to_pybytes() == blob
            return client.read_counts.local > 0

        poll(local_again, 30, "the refused client to read in place again", interval_s=0.2)
