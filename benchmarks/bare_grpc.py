"""The bare grpcio ceiling of the service benchmark: a minimal server and its client calls.

Run as a script, it is the server::

    python benchmarks/bare_grpc.py --total-bytes N --seed S --cert PEM --key PEM

It regenerates the benchmark's payload (:func:`engine_cases.random_payload`,
same size and seed, so the very bytes tierstore holds), cuts it into 64 MiB
shards of 4 MiB frames held in memory as ``bytes``, and serves two methods with
no tierstore code in the way:

* ``/bench.Bare/Get`` (server streaming): request ``Int64Value(shard index)``,
  answer one ``BytesValue(frame)`` per frame — a 4 MiB bytes field per message,
  as tierstore's ``StoredFrame.data``.
* ``/bench.Bare/Put`` (client streaming): ``BytesValue`` frames in, their total
  length out as ``Int64Value``; the frames are dropped as they arrive.

It listens on two ports of ``127.0.0.1``: one with TLS (the tierstore server's
own certificate and key, so the handshake and cipher suite are the same) and
one in plaintext, with the tierstore server's channel options and thread pool
size, and glibc's allocator tuned as ``tierstore serve`` tunes it (without it,
every 4 MiB message buffer is a fresh ``mmap`` the kernel zero-fills, which
would handicap the ceiling). It prints ``bare: tls=<port> plain=<port>`` once
serving and stops on SIGTERM. The messages are protobuf well-known types, so no code is generated.

:class:`BareClient` makes the matching calls with the tierstore client's
channel options; :meth:`BareClient.get` receives into one preallocated buffer,
as ``Client.get`` does.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
from google.protobuf import wrappers_pb2

from tierstore.engine.allocator import ARENAS, tune_allocator

__all__ = ["GET_METHOD", "PUT_METHOD", "BareClient", "main"]

GET_METHOD = "/bench.Bare/Get"
PUT_METHOD = "/bench.Bare/Put"

#: As tierstore.server.app (server) and tierstore.client.channel (client).
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 80 * 1024 * 1024),
    ("grpc.max_send_message_length", 80 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]
CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]
SERVER_WORKERS = 32  # ServerSettings.max_workers


# The server.


def _shards(total_bytes: int, seed: int, shard_bytes: int, frame_bytes: int) -> list[list[bytes]]:
    from engine_cases import random_payload  # a sibling module: the benchmark's own bytes

    payload = memoryview(random_payload(total_bytes, seed))
    return [
        [bytes(payload[f : f + frame_bytes]) for f in range(s, s + shard_bytes, frame_bytes)]
        for s in range(0, total_bytes, shard_bytes)
    ]


def _handlers(shards: list[list[bytes]]) -> grpc.GenericRpcHandler:
    def get(
        request: wrappers_pb2.Int64Value, context: grpc.ServicerContext
    ) -> Iterator[wrappers_pb2.BytesValue]:
        for frame in shards[request.value]:
            yield wrappers_pb2.BytesValue(value=frame)

    def put(
        requests: Iterator[wrappers_pb2.BytesValue], context: grpc.ServicerContext
    ) -> wrappers_pb2.Int64Value:
        return wrappers_pb2.Int64Value(value=sum(len(message.value) for message in requests))

    return grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Get": grpc.unary_stream_rpc_method_handler(
                get,
                request_deserializer=wrappers_pb2.Int64Value.FromString,
                response_serializer=wrappers_pb2.BytesValue.SerializeToString,
            ),
            "Put": grpc.stream_unary_rpc_method_handler(
                put,
                request_deserializer=wrappers_pb2.BytesValue.FromString,
                response_serializer=wrappers_pb2.Int64Value.SerializeToString,
            ),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare grpcio server (benchmark ceiling)")
    parser.add_argument("--total-bytes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--shard-bytes", type=int, default=64 << 20)
    parser.add_argument("--frame-bytes", type=int, default=4 << 20)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    tune_allocator(args.frame_bytes, arenas=ARENAS)
    shards = _shards(args.total_bytes, args.seed, args.shard_bytes, args.frame_bytes)
    server = grpc.server(ThreadPoolExecutor(max_workers=SERVER_WORKERS), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_handlers(shards),))
    credentials = grpc.ssl_server_credentials([(args.key.read_bytes(), args.cert.read_bytes())])
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    if not tls_port or not plain_port:
        print("bare: cannot bind", flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"bare: tls={tls_port} plain={plain_port}", flush=True)
    stop.wait()
    server.stop(2).wait()
    return 0


# The client.


class BareClient:
    """Calls to the bare server over one channel (TLS when ``ca_pem`` is given)."""

    def __init__(self, address: str, ca_pem: bytes | None) -> None:
        if ca_pem is None:
            self._channel = grpc.insecure_channel(address, options=CLIENT_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
            self._channel = grpc.secure_channel(address, credentials, options=CLIENT_OPTIONS)
        self._get: Any = self._channel.unary_stream(
            GET_METHOD,
            request_serializer=wrappers_pb2.Int64Value.SerializeToString,
            response_deserializer=wrappers_pb2.BytesValue.FromString,
        )
        self._put: Any = self._channel.stream_unary(
            PUT_METHOD,
            request_serializer=wrappers_pb2.BytesValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int64Value.FromString,
        )

    def get(self, index: int, nbytes: int) -> pa.Buffer:
        """Shard ``index`` (``nbytes`` long) received into one 64-byte-aligned buffer."""
        out = pa.allocate_buffer(nbytes)
        view = memoryview(out).cast("B")
        position = 0
        for message in self._get(wrappers_pb2.Int64Value(value=index), timeout=600):
            frame = message.value
            view[position : position + len(frame)] = frame
            position += len(frame)
        if position != nbytes:
            raise RuntimeError(f"bare get {index}: {position} of {nbytes} bytes")
        return out

    def put(self, frames: Iterator[memoryview] | list[memoryview]) -> int:
        """Stream ``frames`` (one message each, copied to ``bytes`` as Client.put does)."""
        messages = (wrappers_pb2.BytesValue(value=bytes(frame)) for frame in frames)
        reply = self._put(messages, timeout=600)
        return int(reply.value)

    def close(self) -> None:
        self._channel.close()


if __name__ == "__main__":
    sys.exit(main())
