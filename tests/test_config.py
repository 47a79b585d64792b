"""Engine settings: a value that cannot work is refused, saying what and why."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from tierstore.config import EngineSettings, load_settings
from tierstore.errors import InvalidArgument


def test_a_hot_tier_smaller_than_a_frame_names_both_figures_and_the_setting() -> None:
    # It said only "must hold at least one frame", with neither number; then not how
    # to lower the frame size, which serve has no flag for (a review guessed it).
    with pytest.raises(InvalidArgument, match="1000000 is less than max_frame_bytes, 4194304") as e:
        EngineSettings(hot_capacity_bytes=1_000_000)
    assert "TIERSTORE_MAX_FRAME_BYTES" in str(e.value)
    assert EngineSettings(hot_capacity_bytes=1_000_000, max_frame_bytes=512 << 10)
    assert EngineSettings(hot_capacity_bytes=4 << 20).hot_capacity_bytes == 4 << 20


def test_a_frame_larger_than_a_message_carries_is_refused() -> None:
    # A node of max_frame_bytes 128 MiB took puts whose frames no client could read back.
    with pytest.raises(InvalidArgument, match=r"max_frame_bytes must be 4096 to 67,108,864"):
        EngineSettings(max_frame_bytes=(64 << 20) + 1, hot_capacity_bytes=1 << 30)
    assert EngineSettings(max_frame_bytes=64 << 20, hot_capacity_bytes=1 << 30)


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('archive = "http://x"', "archive must be a table"),
        ("hot_capacity_bytes = [1]", "hot_capacity_bytes must be a whole number"),
        ("[archive]\nbucket = 5", "archive.bucket must be a string, not an int"),
        ("cold_read_parallelism = -1", "cold_read_parallelism must be at least 1"),
        ("promotion_chunk_bytes = 0", "promotion_chunk_bytes must be at least 1"),
        ("put_chunk_bytes = 0", "put_chunk_bytes must be at least 1"),
        ("mover_threads = 2.5", "mover_threads must be a whole number"),
        ("mover_threads = 65", "mover_threads must be at most 64"),
        ("high_watermark = true", "high_watermark must be a number"),
        ("promotion_threads = true", "promotion_threads must be a whole number"),
        ("max_read_leases = -1", "max_read_leases must not be negative"),
        ('data_dir = ""', "data_dir is empty"),
        ("backlog_cap_bytes = -1", "backlog_cap_bytes must not be negative"),
        ("disk_reserve_bytes = -1", "disk_reserve_bytes must not be negative, got -1"),
        ("mover_retry_initial_s = -1", "mover_retry_initial_s must be a positive"),
        ("hot_capacity_bytes = 99999999999999999999", "at most"),
        ("data_dir = 5", "data_dir must be a path"),
        # It said "ArchiveSettings.__init__() got an unexpected keyword argument".
        (
            "[archive]\nbogus = 'x'",
            r"unknown setting 'archive.bogus' \(the \[archive\] table takes",
        ),
    ],
)
def test_a_settings_file_with_a_wrong_type_or_value_is_refused_by_name(
    tmp_path: Path, toml: str, says: str
) -> None:
    # Some crashed with a traceback (a list, a table given as a string, a bad bucket);
    # the rest were taken (true for a thread count as 1, a negative backlog cap).
    path = tmp_path / "node.toml"
    path.write_text(toml + "\n")
    with pytest.raises(InvalidArgument, match=says):
        load_settings(path, environ={})


def test_a_settings_file_that_is_not_utf8_is_refused_by_name(tmp_path: Path) -> None:
    # It was a UnicodeDecodeError's traceback (a file saved as UTF-16, or --config
    # given the key file's neighbour by mistake).
    path = tmp_path / "node.toml"
    path.write_bytes("trace_capacity = 10\n".encode("utf-16"))
    with pytest.raises(InvalidArgument, match=f"cannot read settings file {path}: .*utf-8"):
        load_settings(path, environ={})


def test_a_map_smaller_than_the_hot_tier_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tierstore.config"):
        # Figures of this test's own: each pair is warned about once per process.
        EngineSettings(hot_capacity_bytes=(64 << 20) + 4096, map_size_bytes=(24 << 20) + 4096)
    assert "fills before eviction starts" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tierstore.config"):
        EngineSettings(hot_capacity_bytes=64 << 20)
    assert caplog.text == ""


def test_an_empty_data_dir_variable_is_refused_not_the_current_directory() -> None:
    with pytest.raises(InvalidArgument, match="data_dir is empty"):
        load_settings(environ={"TIERSTORE_DATA_DIR": ""})


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("TIERSTORE_MOVER_THREADS", "setting mover_threads .* must be a whole number"),
        ("TIERSTORE_HIGH_WATERMARK", "setting high_watermark .* must be a number"),
        ("TIERSTORE_HOT_CAPACITY_BYTES", "setting hot_capacity_bytes .* must be a whole number"),
    ],
)
def test_a_variable_that_is_not_a_number_is_refused_by_name(variable: str, says: str) -> None:
    # It said only "bad setting: invalid literal for int() with base 10: 'true'".
    for text in ("true", "10GB", "x"):
        with pytest.raises(InvalidArgument, match=says) as refused:
            load_settings(environ={variable: text})
        assert variable in str(refused.value)


def test_a_mistyped_archive_variable_is_refused_and_engine_ones_still_taken() -> None:
    with pytest.raises(InvalidArgument, match=r"TIERSTORE_ARCHIVE_ENDPOINT .*ENDPOINT_URL"):
        load_settings(environ={"TIERSTORE_ARCHIVE_ENDPOINT": "http://10.0.0.1:9000"})
    taken = load_settings(
        environ={
            "TIERSTORE_ARCHIVE_ENDPOINT_URL": "http://10.0.0.1:9000",
            "TIERSTORE_ARCHIVE_BANDWIDTH_BYTES_PER_S": "1000",  # an engine setting
            "TIERSTORE_TOKEN": "ts_client_side",  # the client's, not a node setting
        }
    )
    assert taken.archive.endpoint_url == "http://10.0.0.1:9000"
    assert taken.archive_bandwidth_bytes_per_s == 1000


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("TIERSTORE_HOT_CAPACITY", "did you mean TIERSTORE_HOT_CAPACITY_BYTES"),
        ("TIERSTORE_MOVER_THREAD", "did you mean TIERSTORE_MOVER_THREADS"),
        ("TIERSTORE_NOTHING_LIKE_ANY", "TIERSTORE_HOT_CAPACITY_BYTES"),
    ],
)
def test_a_mistyped_engine_variable_is_refused_by_name(variable: str, says: str) -> None:
    # It was ignored: TIERSTORE_HOT_CAPACITY=10737418240 started a node with the 64 GiB
    # default, which filled a smaller disk long after the start.
    with pytest.raises(InvalidArgument, match=f"unknown setting {variable}") as refused:
        load_settings(environ={variable: "10737418240"})
    assert says in str(refused.value)
    assert "10737418240" not in str(refused.value)  # a value may be a secret


def test_the_clients_and_the_cli_s_variables_are_not_settings_and_let_be() -> None:
    # The banner has an operator export these in the shell that may start the node.
    client = {
        "TIERSTORE_ADDRESS": "127.0.0.1:7443",
        "TIERSTORE_TOKEN": "ts_x",
        "TIERSTORE_TOKEN_FILE": "/t",
        "TIERSTORE_CA": "/ca.pem",
        "TIERSTORE_INSECURE": "1",
        "TIERSTORE_CLIENT_CERT": "/c.pem",
        "TIERSTORE_CLIENT_KEY": "/c.key",
        "TIERSTORE_LOCAL_READS": "0",
        "TIERSTORE_S3_ACCESS_KEY": "a",
        "TIERSTORE_S3_SECRET_KEY": "s",
    }
    assert load_settings(environ=client) == load_settings(environ={})


def test_kubernetes_service_links_are_not_settings_and_let_be() -> None:
    # Kubernetes gives a pod variables for every Service of its namespace: one named
    # tierstore-archive (an S3 server) made TIERSTORE_ARCHIVE_SERVICE_HOST and others, and
    # a node in that namespace refused to start on "unknown setting".
    links = {}
    for service in ("TIERSTORE", "TIERSTORE_ARCHIVE", "TIERSTORE_METRICS"):
        links |= {
            f"{service}_SERVICE_HOST": "10.96.0.12",
            f"{service}_SERVICE_PORT": "9000",
            f"{service}_SERVICE_PORT_S3": "9000",
            f"{service}_PORT": "tcp://10.96.0.12:9000",
            f"{service}_PORT_9000_TCP": "tcp://10.96.0.12:9000",
            f"{service}_PORT_9000_TCP_PROTO": "tcp",
            f"{service}_PORT_9000_TCP_PORT": "9000",
            f"{service}_PORT_9000_TCP_ADDR": "10.96.0.12",
        }
    links["TIERSTORE_ARCHIVE_PORT_53_UDP"] = "udp://[fd00::12]:53"
    links["TIERSTORE_ARCHIVE_PORT_53_UDP_ADDR"] = "fd00::12"
    assert load_settings(environ=links) == load_settings(environ={})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIERSTORE_METRICS_PORT", "9090"),  # not a link's value (tcp://host:port)
        ("TIERSTORE_ARCHIVE_SERVICE_HOST", "not an address"),
        ("TIERSTORE_HOT_SERVICE_PORT", "many"),
        ("TIERSTORE_PORT_9000_TCP_PROTO", "carrier-pigeon"),
    ],
)
def test_variables_shaped_as_service_links_with_other_values_are_still_refused(
    variable: str, value: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"unknown setting {variable}"):
        load_settings(environ={variable: value})


def test_an_empty_archive_endpoint_variable_is_refused_not_the_embedded_archive() -> None:
    # An unset variable (TIERSTORE_ARCHIVE_ENDPOINT_URL=$URL) named no archive: the node
    # started its embedded one, and the "archived" copies stayed on its own disk.
    for empty in ("", "\t"):
        with pytest.raises(InvalidArgument, match="TIERSTORE_ARCHIVE_ENDPOINT_URL is empty"):
            load_settings(environ={"TIERSTORE_ARCHIVE_ENDPOINT_URL": empty})


@pytest.mark.parametrize(
    "secret",
    ['master_key_b64 = "AAAA"', '[archive]\nsecret_access_key = "s3cr3t"'],
    ids=["master key", "archive secret"],
)
def test_a_settings_file_others_may_read_is_warned_of_when_it_holds_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, secret: str
) -> None:
    # A master key file others may read is warned of; the same key in a settings file
    # others may read was not (and anyone on the host then held the node's keys).
    path = tmp_path / "node.toml"
    path.write_text(secret + "\n")
    for mode, warned in ((0o644, True), (0o604, True), (0o640, False), (0o600, False)):
        path.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tierstore.config"):
            load_settings(path, environ={})
        assert (f"settings file {path} holds a secret" in caplog.text) == warned, (mode, caplog)
        assert "AAAA" not in caplog.text and "s3cr3t" not in caplog.text
    plain = tmp_path / "plain.toml"
    plain.write_text("trace_capacity = 10\n")
    plain.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tierstore.config"):
        load_settings(plain, environ={})
    assert caplog.text == ""  # no secret in it: anyone may read it


def test_a_data_dir_given_as_text_is_a_path(tmp_path: Path) -> None:
    # A str data_dir failed deep inside the store: "unsupported operand type(s) for /".
    assert EngineSettings(data_dir=str(tmp_path)).data_dir == tmp_path  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="data_dir must be a path, not an int"):
        EngineSettings(data_dir=5)  # type: ignore[arg-type]


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("master_key_b64 = 12345678\n[archive]\nsecret_access_key = 831946027713\n")
    with pytest.raises(InvalidArgument) as refused:
        load_settings(path, environ={})
    assert "12345678" not in str(refused.value) and "831946027713" not in str(refused.value)


def test_what_was_taken_before_is_still_taken() -> None:
    # Path-like values, numpy integers, and no zero-copy leases at all (every hot read a
    # private copy) all worked before the type checks.
    settings = load_settings(
        environ={},
        data_dir=PurePosixPath("/tmp/node"),
        hot_capacity_bytes=np.int64(8 << 20),
        max_read_leases=0,
        high_watermark=np.float64(0.8),
    )
    assert settings.data_dir == Path("/tmp/node") and settings.hot_capacity_bytes == 8 << 20
    assert settings.max_read_leases == 0 and settings.high_watermark == 0.8


@pytest.mark.parametrize(
    ("given", "says"),
    [
        # The store opened, then its mover's threads died on the float: nothing was
        # archived again.
        ({"background_niceness": 2.5}, "background_niceness must be a whole number, not a float"),
        ({"hot_capacity_bytes": "100"}, "hot_capacity_bytes must be a whole number, not a str"),
        ({"high_watermark": "0.9"}, "high_watermark must be a number, not a str"),
        ({"promotion_threads": True}, "promotion_threads must be a whole number, not a bool"),
        ({"master_key_b64": 5}, "master_key_b64 must be a string, not an int"),
        ({"master_key_file": ""}, "master_key_file is empty"),
        # A MemoryError, after serve had made the data directory.
        ({"trace_capacity": 10**11}, "trace_capacity must be at most 100,000,000 events"),
        # An OverflowError, past float's range.
        ({"high_watermark": 10**400}, "watermarks must satisfy"),
        # The message did not say which was wrong.
        ({"high_watermark": 1.5}, "got low_watermark 0.75 and high_watermark 1.5"),
        ({"mover_retry_max_s": 10**400}, "mover_retry_max_s must be a positive finite"),
        # Taken, then the prefetcher's byte budget overflowed int() on every round.
        ({"prefetch_horizon_s": float("inf")}, "prefetch_horizon_s must be a finite"),
        ({"prefetch_horizon_s": 10**400}, "prefetch_horizon_s must be a finite"),
        # Past a day the probe thread's timer overflowed and the thread died; below
        # 0.01 s it asked the archive back to back.
        ({"archive_probe_s": 1e300}, "archive_probe_s must be 0.01 to 86,400 seconds"),
        ({"archive_probe_s": 1e-9}, "archive_probe_s must be 0.01 to 86,400 seconds"),
    ],
)
def test_settings_made_in_code_are_checked_by_type_and_name(
    given: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidArgument, match=says):
        EngineSettings(**given)  # type: ignore[arg-type]


def test_a_key_file_given_as_text_is_a_path(tmp_path: Path) -> None:
    # It reached the key file's reader as a str, which failed on .open().
    settings = EngineSettings(master_key_file=str(tmp_path / "master.keys"))  # type: ignore[arg-type]
    assert settings.master_key_file == tmp_path / "master.keys"
    assert EngineSettings(trace_capacity=100_000_000, background_niceness=np.int64(3))


def test_relative_paths_in_a_settings_file_are_taken_from_the_file(tmp_path: Path) -> None:
    # They were taken from the working directory: the same file started from / (a
    # service manager) and from a shell named two nodes, the second silently empty.
    config = tmp_path / "etc" / "node.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "node"\nmaster_key_file = "../keys/master.keys"\n')
    settings = load_settings(config, environ={})
    assert settings.data_dir == tmp_path / "etc" / "node"
    assert settings.master_key_file == tmp_path / "etc" / ".." / "keys" / "master.keys"
    # Absolute paths are kept, and a variable's or an override's path is the caller's.
    config.write_text('data_dir = "/srv/node"\n')
    assert load_settings(config, environ={}).data_dir == Path("/srv/node")
    from_env = load_settings(config, environ={"TIERSTORE_DATA_DIR": "here"})
    assert from_env.data_dir == Path("here")
    assert load_settings(config, environ={}, data_dir=Path("flag")).data_dir == Path("flag")
