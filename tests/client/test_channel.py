"""The client's channel: TLS files are checked when it opens; a server that went away
is tried again every second or so."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import grpc
import pytest

from tests.server.conftest import ServerProcess, poll
from tierstore.client.channel import ChannelSettings, ProcessChannel
from tierstore.client.client import Client
from tierstore.client.connect import connect
from tierstore.client.failures import closed_channel_is_unavailable
from tierstore.client.forkgate import GATE
from tierstore.client.local import LocalReadOptions
from tierstore.errors import InvalidArgument, Unavailable
from tierstore.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    shards_pb2_grpc,
)


def test_a_ca_file_without_a_certificate_is_refused_by_name(tmp_path: Path) -> None:
    # grpc itself took it, and failed every call with "Failed to create security handshaker".
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", ca=ca))
    with pytest.raises(InvalidArgument, match=f"TLS file {ca} holds no PEM certificate"):
        channel.get()


def test_a_client_key_file_without_a_private_key_is_refused_by_name(tmp_path: Path) -> None:
    # grpc took it, and every call failed "to create security handshaker" after a
    # few seconds, with the CLI's hint blaming the CA file and the address.
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_bytes(b"\x00 some other file")
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", client_cert=cert, client_key=key))
    with pytest.raises(InvalidArgument, match=f"TLS file {key} holds no PEM private key"):
        channel.get()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:82979",  # past 65535: gRPC took it as port 17443
        "127.0.0.1:-1",  # and this as 65535
        "127.0.0.1:0",
        "127.0.0.1:+7443",
        "127.0.0.1: 7443",
        "127.0.0.1:7443x",
        "127.0.0.1:\uff17\uff14",  # digits, but not ASCII ones
        ":7443",
        "https://127.0.0.1:7443",
        "node one:7443",
        "[not-ipv6]:7443",
        "127.0.0.1",
        "",
        "dns:///localhost",  # gRPC's schemes, with the same checks
        "dns://8.8.8.8/localhost:99999",
        "ipv4:127.0.0.1:7443,127.0.0.2",
        "ipv6:[::1]:0",
        "ipv4:localhost:7443",  # gRPC takes only literal addresses of the family there
        "ipv6:127.0.0.1:7443",
        "ipv4:[::1]:7443",
    ],
)
def test_an_address_that_is_not_host_and_port_is_refused(address: str) -> None:
    # gRPC wrapped big ports around, to another port, and failed the rest at the first
    # call ("errors resolving"), as Unavailable.
    with pytest.raises(InvalidArgument, match="address must be HOST:PORT with "):
        ChannelSettings(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:7443",
        "localhost:1",
        "node-1.example.internal:65535",
        "[::1]:7443",
        "dns:///localhost:7443",  # gRPC's own schemes, as gRPC takes them
        "dns://10.0.0.2:53/tierstore.svc.cluster.local:7443",
        "dns:localhost:7443",
        "ipv4:127.0.0.1:7443,127.0.0.2:7443",
        "ipv6:[::1]:7443",
        "dns:7443",  # the host named "dns"
    ],
)
def test_host_and_port_addresses_are_taken(address: str) -> None:
    assert ChannelSettings(address).address == address


def test_an_unreadable_ca_file_is_refused(tmp_path: Path) -> None:
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", ca=tmp_path))  # a directory
    with pytest.raises(InvalidArgument, match="cannot read TLS file"):
        channel.get()


@pytest.mark.parametrize(
    ("token", "position"),
    [("ts_abc_secret\n", 13), (" ts_abc", 0), ("ts_a\tb", 4), ("ts_é", 3), ("ts_\x00", 3)],
)
def test_a_token_no_header_can_carry_is_refused_without_showing_it(
    token: str, position: int
) -> None:
    # gRPC took it, and failed every call with a bare "Invalid metadata".
    with pytest.raises(InvalidArgument, match=f"character at position {position} of") as refused:
        ChannelSettings("127.0.0.1:1", token=token)
    assert token.strip() not in str(refused.value)
    ChannelSettings("127.0.0.1:1", token="ts_0123456789ab_A-z_09")  # what tokens look like


def test_a_token_too_long_for_a_header_is_refused_by_its_length() -> None:
    # A 20 KB word passed, and every call failed "received metadata size exceeds hard
    # limit" (ResourceExhausted), which named no token.
    long = "x" * 20_000
    with pytest.raises(InvalidArgument, match="token is 20000 characters") as refused:
        ChannelSettings("127.0.0.1:1", token=long)
    assert long not in str(refused.value)
    ChannelSettings("127.0.0.1:1", token="x" * 1024)


def test_a_channel_whose_server_went_away_tries_to_reconnect_every_second_or_so() -> None:
    # gRPC's own back-off spaces the attempts 1, 1.6, 2.6, 4.1 s ... apart (up to two
    # minutes), so a client kept failing for seconds after its restarted node was back.
    # A listener that hangs up on every connection stands in for a node that is gone,
    # and counts the attempts.
    attempts: list[float] = []
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.05)

        def hang_up() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                attempts.append(time.monotonic())
                connection.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        client = Client(
            ChannelSettings(f"127.0.0.1:{port}", insecure=True),
            local=LocalReadOptions(enabled=False),
        )
        try:
            with pytest.raises(Unavailable):
                client.list_datasets()
            # The channel goes on trying by itself, with no call waiting.
            poll(lambda: attempts and attempts[-1] - attempts[0] > 8, 30, "8 s of attempts")
        finally:
            stop.set()
            thread.join()
            client.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # At most 1.2 s apart (1 s, jittered by 20 %), with room for a loaded machine.
    assert max(gaps) < 2.0, [round(gap, 2) for gap in gaps]


def test_a_call_on_a_channel_closed_under_it_is_unavailable_and_the_client_reopens(
    server: ServerProcess,
) -> None:
    # Another thread's close() between a call's stub and its invocation: grpc raised a
    # bare ValueError ("Cannot invoke RPC on closed channel!").
    with server.connect() as client:
        stub = client._stub(datasets_pb2_grpc.DatasetServiceStub)
        client.close()
        with pytest.raises(Unavailable, match="the client was closed while this call"):
            client._call(stub.ListDatasets, datasets_pb2.ListDatasetsRequest(), idempotent=True)
        client.list_datasets()  # a call made after close() opens a new channel


def test_every_wording_of_a_closed_channel_is_unavailable() -> None:
    # grpc words it two ways: "Cannot invoke RPC on closed channel!" (unary, client
    # streams) and "Cannot invoke RPC: Channel closed!" (server streams, such as the
    # trace export), and the second escaped as a bare ValueError.
    channel = grpc.insecure_channel("127.0.0.1:1")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    shards = shards_pb2_grpc.ShardServiceStub(channel)
    channel.close()
    calls: list[Callable[[], object]] = [
        lambda: admin.ExportTrace(admin_pb2.ExportTraceRequest()),
        lambda: shards.PutShard(iter(())),
    ]
    for call in calls:
        closed = pytest.raises(Unavailable, match="the client was closed")
        with closed, closed_channel_is_unavailable():
            call()
    with pytest.raises(ValueError, match="something else"), closed_channel_is_unavailable():
        raise ValueError("something else")


@pytest.mark.parametrize("given", ["client_cert", "client_key"])
def test_half_a_client_certificate_pair_is_refused_not_an_abort(given: str, tmp_path: Path) -> None:
    # gRPC aborted the whole process (SIGABRT) on a key without its certificate.
    with pytest.raises(InvalidArgument, match="both a client certificate and its key") as half:
        ChannelSettings("127.0.0.1:1", **{given: tmp_path / "half.pem"})
    assert "the CLI's --client-cert and --client-key" in str(half.value)  # all three doors
    variable = {"client_cert": "TIERSTORE_CLIENT_CERT", "client_key": "TIERSTORE_CLIENT_KEY"}
    environ = {"TIERSTORE_ADDRESS": "127.0.0.1:1", variable[given]: str(tmp_path / "x.pem")}
    with pytest.raises(InvalidArgument, match="both a client certificate and its key"):
        connect(environ=environ)


def test_an_insecure_argument_wins_over_the_environment() -> None:
    environ = {"TIERSTORE_ADDRESS": "127.0.0.1:1", "TIERSTORE_INSECURE": "1"}
    assert connect(environ=environ)._channel.settings.insecure
    assert not connect(insecure=False, environ=environ)._channel.settings.insecure


def test_the_environment_may_be_any_mapping_and_nothing_else() -> None:
    # Typed dict only: connect(environ=os.environ) failed a user's type check, though it
    # ran; a list ran into an AttributeError.
    environ = MappingProxyType({"TIERSTORE_ADDRESS": "127.0.0.1:1", "TIERSTORE_INSECURE": "1"})
    assert connect(environ=environ)._channel.settings.insecure
    with pytest.raises(InvalidArgument, match="environ= must be a mapping of variables"):
        connect(environ=["TIERSTORE_INSECURE=1"])  # type: ignore[arg-type]


def test_grpcs_own_schemes_reach_the_server(server: ServerProcess) -> None:
    host, port = server.address.rsplit(":", 1)
    for target in (f"dns:///localhost:{port}", f"ipv4:{host}:{port}"):
        with connect(target, token=server.token, ca=server.ca_path) as client:
            assert isinstance(client.list_datasets(), list), target


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"address": 123}, "address= must be HOST:PORT as a str, not int"),
        ({"token": 123}, "token= must be a str, not int"),
        ({"token": None, "token_file": 5}, "token_file= must be a path"),
        ({"ca": 123}, "ca= must be a path"),
        ({"client_cert": 1, "client_key": "k"}, "client_cert= must be a path"),
        ({"client_cert": "c", "client_key": 2.0}, "client_key= must be a path"),
    ],
)
def test_connect_refuses_arguments_of_the_wrong_type_by_name(
    given: dict[str, object], match: str
) -> None:
    # Each was a bare AttributeError or TypeError from deep inside (addresses, pathlib).
    arguments = {"address": "127.0.0.1:1", "token": "ts_a_b", **given}
    with pytest.raises(InvalidArgument, match=match):
        connect(**arguments, environ={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "variable",
    ["TIERSTORE_ADDRESS", "TIERSTORE_TOKEN", "TIERSTORE_INSECURE", "TIERSTORE_LOCAL_READS"],
)
def test_connect_refuses_a_variable_of_environ_that_is_no_str(variable: str) -> None:
    # A mapping loaded from YAML or JSON may hold numbers: each was a bare AttributeError
    # or TypeError.
    environ: dict[str, object] = {"TIERSTORE_ADDRESS": "127.0.0.1:1", "TIERSTORE_TOKEN": "ts_a_b"}
    environ[variable] = 1
    with pytest.raises(InvalidArgument, match=f"^{variable} must be a str, not int"):
        connect(environ=environ)  # type: ignore[arg-type]


def test_a_tls_file_that_is_not_there_is_refused_when_connecting(tmp_path: Path) -> None:
    # Taken until the first call, unlike the DataLoader datasets, which refused it at once.
    missing = tmp_path / "ca.pem"
    with pytest.raises(InvalidArgument, match=f"cannot read TLS file {missing} \\(ca= or TIER"):
        connect("127.0.0.1:1", token="ts_a_b", ca=missing, environ={})
    with pytest.raises(InvalidArgument, match=f"cannot read TLS file {tmp_path}"):
        connect("127.0.0.1:1", token="ts_a_b", environ={"TIERSTORE_CA": str(tmp_path)})
    missing.write_text("a CA")  # read (and checked) with the first call
    assert connect("127.0.0.1:1", token="ts_a_b", ca=missing, environ={})


@pytest.mark.parametrize(
    ("first", "environment", "warned"),
    [
        ("import grpc", {}, True),
        ("import grpc", {"GRPC_ENABLE_FORK_SUPPORT": "1"}, False),
        ("import grpc", {"GRPC_ENABLE_FORK_SUPPORT": "0"}, False),
        ("pass", {}, False),
    ],
    ids=["grpc-first", "set-before", "turned-off", "tierstore-first"],
)
def test_grpc_imported_before_tierstore_without_fork_support_is_warned_about(
    first: str, environment: dict[str, str], warned: bool
) -> None:
    # Importing tierstore turns gRPC's fork support on, but gRPC reads the variable when
    # it is imported: a program that imported it first (or a library that did) ran with
    # it off, and its forked DataLoader workers' channels failed now and then, unsaid.
    program = (
        f"{first}\n"
        "from tierstore.client.channel import ChannelSettings, ProcessChannel\n"
        "ProcessChannel(ChannelSettings('127.0.0.1:1', insecure=True)).get().close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env | environment,
        capture_output=True,
        timeout=120,
        check=True,
    )
    said = done.stderr.decode()
    assert ("GRPC_ENABLE_FORK_SUPPORT=1" in said) == warned, said
    assert ("grpc was imported before" in said) == warned, said


_CLOSE_UNDER_CALLS = """
import collections, json, sys, threading, time
import tierstore
from tierstore.errors import Unavailable

address, ca, token, dataset, seconds = sys.argv[1:6]
sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes: a wide race
client = tierstore.connect(address, token=token, ca=ca, local_reads=False)
seen = collections.Counter()
stop = threading.Event()

def closer():
    while not stop.is_set():
        client.close()

def caller():
    while not stop.is_set():
        try:
            client.stat(dataset, "s")
            seen["result"] += 1
        except Unavailable:
            seen["Unavailable"] += 1
        except BaseException as error:
            seen[f"{type(error).__name__}: {error}"[:120]] += 1

def getter():  # the channel itself, as a stub is made on it
    while not stop.is_set():
        try:
            seen["channel" if client._channel.get() is not None else "None"] += 1
        except BaseException as error:
            seen[f"{type(error).__name__}: {error}"[:120]] += 1

threads = [threading.Thread(target=closer), threading.Thread(target=getter)]
threads += [threading.Thread(target=caller) for _ in range(4)]
for thread in threads:
    thread.start()
time.sleep(float(seconds))
stop.set()
for thread in threads:
    thread.join()
client.stat(dataset, "s")  # the client reopens its channel once nobody closes it
seen["after"] += 1
client.close()
print(json.dumps(seen))
"""


def test_calls_while_another_thread_closes_the_client_end_in_a_result_or_unavailable(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    """close() racing with calls on other threads crashed the process (SIGSEGV: a stub
    registered its methods on a channel closed under it) or raised AssertionError (a
    closed channel seen as this process's); a call in flight when the client is closed
    ends with Unavailable, as documented. Run in a child, so a crash fails the test."""
    admin.put(dataset, "s", b"x" * 100)
    root = Path(__file__).resolve().parents[2]
    arguments = [server.address, str(server.ca_path), server.token, dataset, "3"]
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _CLOSE_UNDER_CALLS, *arguments],
        env=os.environ | {"PYTHONPATH": str(root)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    seen = json.loads(done.stdout.decode().splitlines()[-1])
    assert set(seen) <= {"result", "Unavailable", "channel", "after"}, seen
    # (How many calls of the race end in a result depends on the machine's load.)
    assert seen["after"] == 1, seen


def test_a_stub_made_while_a_fork_waits_never_holds_up_the_calls_in_flight() -> None:
    # A stub made outside any call took the channel's lock, then waited for the fork
    # gate a fork held; a call in flight that needed a stub then waited for that lock,
    # and the fork waited for the call: the fork went ahead at its deadline with the
    # call in flight (a child that may hang). The gate comes first, then the lock.
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", insecure=True))
    inside, go, made = threading.Event(), threading.Event(), []

    def call_in_flight() -> None:
        with GATE.call():
            inside.set()
            assert go.wait(30)
            made.append(channel.stub(lambda ch: ch))

    in_flight = threading.Thread(target=call_in_flight)
    in_flight.start()
    assert inside.wait(30)
    left: list[int] = []
    fork = threading.Thread(target=lambda: (left.append(GATE.hold(10.0)), GATE.release()))
    fork.start()
    poll(lambda: GATE._holding, 10, "the fork to wait for the call in flight")
    outside = threading.Thread(target=lambda: made.append(channel.stub(lambda ch: ch)))
    outside.start()
    waiters = GATE._condition._waiters  # type: ignore[attr-defined]
    poll(lambda: len(waiters) >= 2, 10, "the stub made outside to wait for the fork")
    go.set()
    fork.join(30)
    assert left == [0]  # no call was still in flight when the fork went ahead
    for thread in (in_flight, outside):
        thread.join(30)
    assert len(made) == 2
    channel.close()
