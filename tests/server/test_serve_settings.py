"""Where ``tierstore serve`` takes its archive from (the settings file, then flags), and
the address its banner tells clients to connect to.

README "Configuration": settings load from ``--config``, then ``TIERSTORE_*`` variables,
then flags, the archive (``[archive] endpoint_url, bucket, prefix, ...``) included. A
node told of an external archive only by its settings file must use it: starting the
embedded one instead would keep the "archived" copy on the hot tier's own disk.
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tierstore.cli.banner import connect_host, print_banner
from tierstore.tiers.s3 import S3Settings
from tierstore.tiers.seaweedfs import SeaweedServer

from .conftest import (
    ServerProcess,
    archived_keys,
    clean_env,
    free_port,
    free_ports,
    serve_error_lines,
    tierstore_command,
    unique,
)


def write_archive_section(path: Path, s3: S3Settings, **changes: str) -> Path:
    fields = {
        "endpoint_url": s3.endpoint_url,
        "bucket": s3.bucket,
        "prefix": s3.prefix,
        "access_key_id": s3.access_key_id,
        "secret_access_key": s3.secret_access_key,
        **changes,
    }
    path.write_text("[archive]\n" + "".join(f'{k} = "{v}"\n' for k, v in fields.items()))
    return path


def put_through(node: ServerProcess, dataset: str) -> None:
    """A write-through put into a new ``dataset``: in the archive when it returns."""
    with node.connect() as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
        client.put(dataset, "a", b"archived as it is put")


def test_the_archive_named_in_the_settings_file_is_used(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"{unique('config-archive')}/")
    config = write_archive_section(tmp_path / "node.toml", s3)
    node = spawn_server(tmp_path / "node", "--config", str(config), embedded=True)
    put_through(node, "configured")
    assert not (node.data_dir / "archive").exists()  # no embedded archive was started
    keys = archived_keys(s3)
    assert any("configured" in key for key in keys), keys


def test_a_flag_wins_over_the_settings_file(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"{unique('config-file')}/")
    flagged = f"{unique('config-flag')}/"
    config = write_archive_section(tmp_path / "node.toml", s3)
    node = spawn_server(
        tmp_path / "node", "--config", str(config), "--prefix", flagged, embedded=True
    )
    put_through(node, "flagged")
    assert archived_keys(s3) == ()
    keys = archived_keys(dataclasses.replace(s3, prefix=flagged))
    assert any("flagged" in key for key in keys), keys


def test_an_empty_prefix_flag_clears_the_settings_files_prefix(
    tmp_path: Path, seaweedfs: SeaweedServer, spawn_server: Callable[..., ServerProcess]
) -> None:
    bucket = unique("noprefix")  # a bucket of its own: the keys are at its root
    s3 = seaweedfs.s3_settings(bucket, prefix="configured/")
    config = write_archive_section(tmp_path / "node.toml", s3)
    node = spawn_server(tmp_path / "node", "--config", str(config), "--prefix", "", embedded=True)
    put_through(node, "rootward")
    keys = archived_keys(dataclasses.replace(s3, prefix=""))
    assert any("rootward" in key for key in keys), keys
    assert not any(key.startswith("configured/") for key in keys), keys


@pytest.mark.parametrize(
    ("listen_host", "expected"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("[::]", "[::1]"),
        ("127.0.0.1", "127.0.0.1"),
        ("tierstore-0.tierstore", "tierstore-0.tierstore"),
    ],
)
def test_the_banner_names_an_address_to_connect_to(listen_host: str, expected: str) -> None:
    # Serving on every interface, the banner's TIERSTORE_ADDRESS is still one a client on
    # this machine can use and the certificate names (a wildcard is neither).
    assert connect_host(listen_host) == expected


def test_the_banner_says_a_wildcard_serves_every_interface(tmp_path: Path) -> None:
    # It said "serving on 127.0.0.1:7443" for --listen 0.0.0.0:7443, as if the node
    # served this host alone; and the metrics on 127.0.0.1 wherever they were bound.
    out = io.StringIO()
    ports = SimpleNamespace(health_port=7444, metrics_port=7445)
    print_banner(out, "0.0.0.0", 7443, ports, tmp_path, None, False, metrics_host="[::]")  # type: ignore[arg-type]
    banner = out.getvalue()
    assert "tierstore: serving on 0.0.0.0:7443 (TLS)" in banner
    assert "export TIERSTORE_ADDRESS=127.0.0.1:7443" in banner  # one a client can use
    assert "metrics on http://[::1]:7445/metrics" in banner


def test_the_banner_says_a_token_file_to_export_is_missing(tmp_path: Path) -> None:
    # A node restored without its admin.token printed the export as if the file were
    # there: copied into a shell, the next command failed to read it.
    ports = SimpleNamespace(health_port=0, metrics_port=0)
    for present in (False, True):
        out = io.StringIO()
        print_banner(out, "127.0.0.1", 7443, ports, tmp_path, None, False)  # type: ignore[arg-type]
        export = next(line for line in out.getvalue().splitlines() if "TOKEN_FILE" in line)
        assert export.endswith("admin.token") == present, export
        assert ("# missing" in export) != present
        (tmp_path / "admin.token").write_text("ts_a_b\n")


def failed_start(*args: str) -> tuple[int, str]:
    """Run ``tierstore serve ARGS``, which must fail with one error line and no
    traceback; its exit code and that line."""
    done = subprocess.run(
        [tierstore_command(), "serve", *args], env=clean_env(), capture_output=True, timeout=120
    )
    errors = serve_error_lines(done.stderr.decode())
    assert len(errors) == 1 and b"Traceback" not in done.stderr, done.stderr.decode()[-2000:]
    return done.returncode, errors[0]


def serve_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> int:
    """Run ``tierstore serve ARGS`` in ``cwd`` against an archive nobody answers at (so a
    new node stops after making its data directory); its exit code."""
    return served_in(cwd, *args, env=env).returncode


def served_in(
    cwd: Path, *args: str, env: dict[str, str] | None = None, archive: tuple[str, ...] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """:func:`serve_in`'s run, whole; ``archive``: flags naming it instead of the dead one."""
    if archive is None:
        archive = ("--s3-endpoint", f"http://127.0.0.1:{free_port()}")
    # Every port free: a node on the defaults (a developer's, the README's) failed these
    # runs with "cannot listen on 127.0.0.1:7444 (--health-listen)".
    ports = ("--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0")
    ports += ("--metrics-listen", "127.0.0.1:0")
    return subprocess.run(
        [tierstore_command(), "serve", *archive, *ports, *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("where", ["settings file", "environment"])
def test_the_data_dir_of_the_settings_is_used_without_the_flag(tmp_path: Path, where: str) -> None:
    # It was ignored: the node made ./tierstore-data in the current directory, perhaps
    # on another disk than the one the operator named.
    cwd, named = tmp_path / "cwd", tmp_path / "named"
    cwd.mkdir()
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{named}"\n' if where == "settings file" else "")
    env = {"TIERSTORE_DATA_DIR": str(named)} if where == "environment" else {}
    assert serve_in(cwd, "--config", str(config), env=env) != 0  # the archive is dead
    assert (named / "serve.lock").exists() and list(cwd.iterdir()) == []
    # The flag wins over both.
    flagged = tmp_path / "flagged"
    assert serve_in(cwd, "--config", str(config), "--data-dir", str(flagged), env=env) != 0
    assert (flagged / "serve.lock").exists() and list(cwd.iterdir()) == []


def test_a_bad_settings_file_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("promotion_threads = true\n")
    assert serve_in(tmp_path, "--config", str(config), "--data-dir", "node") == 2
    assert not (tmp_path / "node").exists()  # it left a data directory with a lock


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--local-grant-ttl", "-5"), {}, "--local-grant-ttl must be more than 0"),
        (("--bucket", "x"), {}, "bucket name must be 3-63 characters"),
        ((), {"TIERSTORE_ARCHIVE_BUCKET": "x"}, "bucket name must be 3-63 characters"),
        # S3 answered 400 InvalidBucketName, once the embedded archive was made.
        (("--bucket", "Bad_Bucket"), {}, "is not one S3 takes for a new bucket"),
        # A typo under the archive's prefix left the node on its embedded archive.
        ((), {"TIERSTORE_ARCHIVE_PREFX": "team/"}, "unknown setting TIERSTORE_ARCHIVE_PREFX"),
        # A name no certificate can hold was found only when the TLS files were made.
        (("--hostname", "bad name"), {}, "'bad name' is neither a DNS name nor an IP"),
        # Taken: the node served plaintext, asking no caller for a certificate.
        (("--insecure", "--require-client-cert"), {}, "--require-client-cert needs TLS"),
        # Taken without a word: no certificate holds the names.
        (("--insecure", "--hostname", "node.example"), {}, "--hostname names the TLS"),
        # An unset variable in a script (--s3-endpoint "$ARCHIVE_URL") was no archive
        # named: the node started its embedded one, the "archived" copies on its own disk.
        (("--s3-endpoint", ""), {}, "--s3-endpoint is empty"),
        ((), {"TIERSTORE_ARCHIVE_ENDPOINT_URL": ""}, "TIERSTORE_ARCHIVE_ENDPOINT_URL is empty"),
        # An empty bucket ("$BUCKET" unset) was the default one, perhaps a shared bucket.
        (("--bucket", ""), {}, "--bucket is empty"),
        (("--s3-secret-key", ""), {}, "--s3-secret-key is empty"),
        # An external archive's keys with no endpoint: ignored, the node started its
        # embedded archive, and what it "archived" stayed on its own disk.
        (
            ("--s3-access-key", "AK", "--s3-secret-key", "SK"),
            {},
            "are an external archive's, and none is named",
        ),
    ],
)
def test_a_bad_option_is_refused_before_the_node_makes_anything(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    # Each was refused only once the node had made its keys, admin token and embedded
    # archive: the next, good start then did not say where its admin token came from.
    done = served_in(tmp_path, "--data-dir", "node", *args, env=env, archive=())
    assert done.returncode == 2, done.stderr.decode()
    assert says in done.stderr.decode()
    assert not (tmp_path / "node").exists()


def test_two_master_keys_in_the_environment_are_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    # (--master-key-file wins over TIERSTORE_MASTER_KEY_B64: a flag, not a conflict.)
    env = {"TIERSTORE_MASTER_KEY_B64": "x", "TIERSTORE_MASTER_KEY_FILE": str(tmp_path / "k")}
    done = served_in(tmp_path, "--data-dir", "node", env=env, archive=())
    assert done.returncode == 2 and "name one" in done.stderr.decode()
    assert not (tmp_path / "node").exists()


def test_a_data_dir_file_the_node_cannot_use_is_one_line_not_a_traceback(
    tmp_path: Path, seaweedfs: SeaweedServer, s3_bucket: str
) -> None:
    # tokens.json of another user (a first start as root) crashed the start with a
    # 90-line traceback; a directory in its place fails the same way, even for root.
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"{unique('files')}/")
    data_dir = tmp_path / "node"
    (data_dir / "tokens.json").mkdir(parents=True)
    api, health = free_ports(2)
    code, error = failed_start(
        *("--data-dir", str(data_dir), "--listen", f"127.0.0.1:{api}"),
        *("--health-listen", f"127.0.0.1:{health}", "--metrics-listen", ""),
        *("--s3-endpoint", s3.endpoint_url, "--bucket", s3.bucket, "--prefix", s3.prefix),
        *("--s3-access-key", s3.access_key_id, "--s3-secret-key", s3.secret_access_key),
    )
    assert code == 2 and "tokens.json: Is a directory" in error


def test_the_hot_capacity_flag_wins_over_the_settings_file_from_the_start(tmp_path: Path) -> None:
    # The settings were first read without the flags: a file's capacity too small for a
    # frame refused the start although --hot-capacity set another.
    config = tmp_path / "node.toml"
    config.write_text("hot_capacity_bytes = 1000\n")
    plain = serve_in(tmp_path, "--config", str(config), "--data-dir", "refused")
    assert plain == 2 and not (tmp_path / "refused").exists()
    flagged = serve_in(
        tmp_path, "--config", str(config), "--data-dir", "node", "--hot-capacity", str(1 << 30)
    )
    assert flagged != 2 and (tmp_path / "node" / "serve.lock").exists()  # the archive is dead


def test_a_hot_capacity_flag_of_zero_is_refused_not_taken_for_no_flag(tmp_path: Path) -> None:
    # --hot-capacity 0 started a node with the 64 GiB default, though the same 0 in the
    # settings file or the environment is refused by name.
    assert serve_in(tmp_path, "--data-dir", "zero", "--hot-capacity", "0") == 2
    assert not (tmp_path / "zero").exists()


@pytest.mark.parametrize("option", ["--listen", "--health-listen", "--metrics-listen"])
def test_a_busy_port_is_one_line_before_anything_is_made(tmp_path: Path, option: str) -> None:
    # It was found only when the server bound its ports: after the archive had started
    # and the store opened (a rebuild, perhaps), behind a line of gRPC's own.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        names = ("--listen", "--health-listen", "--metrics-listen")
        free = zip(names, free_ports(3), strict=True)
        ports = {name: f"127.0.0.1:{port}" for name, port in free} | {option: busy}
        pairs = (word for pair in ports.items() for word in pair)
        code, error = failed_start("--data-dir", str(tmp_path / "node"), *pairs)
    assert code != 0 and f"cannot listen on {busy} ({option})" in error
    assert not (tmp_path / "node").exists()  # nothing made: no archive, no store


def test_a_start_refused_after_its_options_are_read_says_so_in_a_json_line(
    tmp_path: Path,
) -> None:
    # The node's log is JSON lines, but its refusal was a plain "error: ..." line among
    # them, which a log pipeline could not parse.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [tierstore_command(), "serve", "--data-dir", str(tmp_path / "n"), "--listen", busy],
            env=clean_env(),
            capture_output=True,
            timeout=120,
        )
    assert done.returncode == 5, done.stderr
    lines = [json.loads(line) for line in done.stderr.decode().splitlines() if line.strip()]
    (refusal,) = [line for line in lines if line["level"] == "error"]
    assert refusal["error"] == "Unavailable" and f"cannot listen on {busy}" in refusal["msg"]


@pytest.mark.parametrize(
    ("health", "metrics", "says"),
    [
        ("127.0.0.1:{api}", "", "--listen and --health-listen both name port {api}"),
        ("127.0.0.1:0", "0.0.0.0:{api}", "--listen and --metrics-listen both name port {api}"),
        ("127.0.0.1:{other}", ":{other}", "--health-listen and --metrics-listen both name"),
    ],
)
def test_two_options_on_one_port_are_refused_before_anything_is_made(
    tmp_path: Path, health: str, metrics: str, says: str
) -> None:
    # Each port was free when checked, so the node made its keys, archive and hot tier,
    # then failed to bind the second: "Address already in use", though only it used it.
    ports = dict(zip(("api", "other"), free_ports(2), strict=True))
    code, error = failed_start(
        *("--data-dir", str(tmp_path / "node"), "--listen", f"127.0.0.1:{ports['api']}"),
        *("--health-listen", health.format(**ports), "--metrics-listen", metrics.format(**ports)),
    )
    assert code == 2 and says.format(**ports) in error, error
    assert not (tmp_path / "node").exists()


def test_an_archive_prefix_without_a_slash_is_warned_about(tmp_path: Path) -> None:
    # "p1" stored dataset "wb" under "p1wb/": a node on prefix "p" then took those
    # objects for its own, and refused to start with a misleading key error.
    for prefix, warned in (("p1", True), ("p1/", False), ("", False)):
        done = served_in(tmp_path, "--data-dir", f"node-{warned}-{len(prefix)}", "--prefix", prefix)
        assert ("does not end in '/'" in done.stderr.decode()) == warned, done.stderr.decode()
        if warned:
            assert "'p1ds/'" in done.stderr.decode() and "'p1/'" in done.stderr.decode()


def test_a_hot_tier_larger_than_the_disk_is_warned_about(tmp_path: Path) -> None:
    # The 64 GiB default on a smaller disk said nothing: puts failed, full, much later.
    for capacity, warned in ((1 << 46, True), (1 << 30, False)):
        done = served_in(tmp_path, "--data-dir", f"node-{warned}", "--hot-capacity", str(capacity))
        said = done.stderr.decode()
        assert ("but the disk of" in said) == warned, said
        if warned:
            assert f"{1 << 46:,}" in said and "lower the hot tier's capacity" in said


def test_an_archive_secret_key_on_the_command_line_is_warned_of(tmp_path: Path) -> None:
    # Every user of the host reads a process's arguments for as long as it runs.
    keys = ("--s3-access-key", "AK")
    on_argv = served_in(tmp_path, "--data-dir", "a", *keys, "--s3-secret-key", "SK")
    assert "secret key was given on the command line" in on_argv.stderr.decode()
    in_env = served_in(tmp_path, "--data-dir", "b", *keys, env={"TIERSTORE_S3_SECRET_KEY": "SK"})
    assert in_env.returncode == on_argv.returncode != 0  # the archive is dead
    assert "given on the command line" not in in_env.stderr.decode()
