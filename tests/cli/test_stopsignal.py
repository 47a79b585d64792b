"""SIGTERM and SIGHUP stop a command as Ctrl-C does (tierstore/cli/stopsignal.py): what
it did is reported, its partial download removed, and it exits 143 or 129. Their
default killed it where it stood: a hidden ``.part`` file left behind, and nothing said."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import clean_env, tierstore_command
from tierstore.cli.stopsignal import stopping_on_sigterm

A_TOKEN = "ts_" + "a" * 12 + "_" + "b" * 43


def _stopped_rm(
    signum: signal.Signals, *, hangup_ignored: bool = False
) -> tuple[int, bytes, bytes]:
    """Run ``rm ds a b`` against a server that answers no call, with SIGHUP ignored as
    ``nohup`` starts it or at its default (whatever this test run's is), send it
    ``signum`` once its first delete is on its way, and return its exit status,
    stdout and stderr. With the hangup ignored, it must still be running a second
    later: a SIGTERM then stops it."""
    hangup = signal.SIG_IGN if hangup_ignored else signal.SIG_DFL
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes calls, answers none
        silent.settimeout(60)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        connection = ("--address", address, "--insecure", "--token", A_TOKEN)
        command = subprocess.Popen(
            [tierstore_command(), "--json", *connection, "rm", "ds", "a", "b"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup),
        )
        try:
            held, _ = silent.accept()  # the first delete is on its way
            command.send_signal(signum)
            if hangup_ignored:
                with pytest.raises(subprocess.TimeoutExpired):
                    command.wait(timeout=1)
                command.send_signal(signal.SIGTERM)
            out, err = command.communicate(timeout=60)
            held.close()
        finally:
            command.kill()
    return command.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_report_what_a_command_did_and_exit_128_plus_the_signal(
    signum: signal.Signals,
) -> None:
    # SIGHUP (a dropped ssh session) killed it where it stood, as SIGTERM had (a review).
    code, out, err = _stopped_rm(signum)
    assert code == 128 + signum, err
    assert json.loads(out) == {"deleted": [], "not_deleted": ["a", "b"], "in_doubt": "a"}
    assert f"stopped by {signum.name}; 'a' was on its way" in err.decode()
    assert "Traceback" not in err.decode()


def test_a_hangup_ignored_as_nohup_ignores_it_stays_ignored() -> None:
    code, _, err = _stopped_rm(signal.SIGHUP, hangup_ignored=True)
    # Still running after the hangup: stopped by the SIGTERM that followed.
    assert code == 143, err
    assert "stopped by SIGTERM" in err.decode()


_DOWNLOAD = """
import os, signal, sys, time
from pathlib import Path
from tierstore.cli.stopsignal import stopping_on_sigterm
from tierstore.client.download import partial_file
with stopping_on_sigterm(), partial_file(Path(sys.argv[1])) as file:
    file.write(b"half a shard")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
"""


def test_the_handler_before_it_is_put_back() -> None:
    # main() run in a test's own process left its handler there: a SIGTERM for the
    # test run (a CI time-out) raised KeyboardInterrupt wherever the run was.
    before = signal.getsignal(signal.SIGTERM)
    with stopping_on_sigterm():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_download_stopped_by_sigterm_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "shard.bin"
    done = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD, str(target)], capture_output=True, timeout=120
    )
    assert done.returncode != 0 and b"KeyboardInterrupt" in done.stderr
    assert os.listdir(tmp_path) == []
