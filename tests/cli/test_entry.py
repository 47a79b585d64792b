"""The console script's entry (tierstore/cli/entry.py): Ctrl-C while the command line
loads ends the command as Ctrl-C does later, and otherwise the command runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

#: Runs the entry as the console script does, ``argv`` given; with ``CUT_SHORT`` set,
#: the import of typer (one of the command line's first) is interrupted by Ctrl-C; with
#: ``SIGNALLED`` set, the process sends itself that signal as typer starts to load.
_SCRIPT = """
import builtins, os, sys
if os.environ.get("CUT_SHORT_AS_BUILT"):
    import typer.main
    real_get_command = typer.main.get_command
    def built_cut_short(typer_instance):
        if typer_instance.registered_groups:  # the command tree's (the options' have none)
            raise KeyboardInterrupt
        return real_get_command(typer_instance)
    typer.main.get_command = built_cut_short
real_import = builtins.__import__
def import_cut_short(name, *args, **kwargs):
    if name == "typer":
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)
def import_signalled(name, *args, **kwargs):
    if name == "typer":
        os.kill(os.getpid(), int(os.environ["SIGNALLED"]))
    return real_import(name, *args, **kwargs)
if os.environ.get("CUT_SHORT"):
    builtins.__import__ = import_cut_short
if os.environ.get("SIGNALLED"):
    builtins.__import__ = import_signalled
sys.argv = ["tierstore", *sys.argv[1:]]
from tierstore.cli.entry import main
main()
"""

_SWITCHES = ("CUT_SHORT", "SIGNALLED", "CUT_SHORT_AS_BUILT")


def run_entry(
    *argv: str, cut_short: bool = False, signalled: int | None = None, as_built: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in _SWITCHES}
    if cut_short:
        env["CUT_SHORT"] = "1"
    if as_built:
        env["CUT_SHORT_AS_BUILT"] = "1"
    if signalled is not None:
        env["SIGNALLED"] = str(signalled)
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ctrl_c_while_the_command_line_loads_exits_130_without_a_traceback() -> None:
    # It printed the traceback of whichever import it cut short (numpy's, say).
    done = run_entry("--help", cut_short=True)
    assert done.returncode == 130
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_ctrl_c_as_the_command_tree_is_built_exits_130_without_a_traceback() -> None:
    # Past the entry's guard, typer builds the tree outside click's own handling: a
    # traceback and exit -2, in a window of some 50 ms (a review's probe).
    done = run_entry("--help", as_built=True)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_python_dash_m_tierstore_is_the_console_script() -> None:
    # The package had no __main__; the benchmarks ran `python -m tierstore.cli.main`,
    # which loads grpc before any of the entry's first steps (the node's arena cap
    # among them: its node kept glibc's nine arenas).
    done = subprocess.run(
        [sys.executable, "-m", "tierstore", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m tierstore serve" in done.stdout
    module = subprocess.run(
        [sys.executable, "-m", "tierstore.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert module.returncode == 2
    assert module.stderr.strip() == (
        "tierstore: run the tierstore command, or python -m tierstore, not this module"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_a_node_loads_is_caught_and_ends_it(
    tmp_path: Path, signum: signal.Signals
) -> None:
    # Left at its default action, a signal to a container's process 1 is dropped by the
    # kernel: a node whose pod was deleted as it started came up and served until it was
    # killed. Caught, it ends the start as the default action would have, 128 + signum.
    data_dir = tmp_path / "data"
    done = run_entry("serve", "--data-dir", str(data_dir), signalled=signum)
    assert done.returncode == 128 + signum, done.stderr
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()


def test_a_sigterm_while_another_command_loads_ends_it_too() -> None:
    done = run_entry("dataset", "ls", "--address", "127.0.0.1:1", signalled=signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "Traceback" not in done.stderr


def test_the_entry_runs_the_command() -> None:
    done = run_entry("--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: tierstore" in done.stdout


def test_the_console_script_is_the_entry() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["tierstore"] == "tierstore.cli.entry:main"


def run_closed(fd: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """The entry run with descriptor ``fd`` (1: stdout, 2: stderr) closed, as ``>&-``
    leaves it; the other one captured."""
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv],
        env={key: value for key, value in os.environ.items() if key not in _SWITCHES},
        stdout=subprocess.DEVNULL if fd == 1 else subprocess.PIPE,
        stderr=subprocess.DEVNULL if fd == 2 else subprocess.PIPE,
        preexec_fn=lambda: os.close(fd),
        text=True,
        timeout=120,
    )


def test_a_closed_stdout_is_refused_in_one_line_before_any_call() -> None:
    # It died at import with an AttributeError traceback (sys.stdout is None).
    done = run_closed(1, "--json", "dataset", "ls", "--address", "127.0.0.1:1", "--insecure")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "stdout is closed" in lines[0], done.stderr


def test_serve_and_a_closed_stderr_go_on() -> None:
    # A node needs no stdout: its banner goes nowhere.
    assert run_closed(1, "serve", "--help").returncode == 0
    # A closed stderr: the error line goes nowhere, the exit code tells (5: unavailable).
    done = run_closed(2, "--json", "dataset", "ls", "--address", "127.0.0.1:1", "--insecure")
    assert (done.returncode, done.stdout) == (5, "")


def test_a_command_that_returned_leaves_the_default_actions_behind() -> None:
    # The handler caught while the command line loaded stayed through the interpreter's
    # shutdown: a SIGTERM then (an atexit hook's wait) was swallowed and the exit was 0.
    script = (
        "import signal, sys\n"
        "sys.argv = ['tierstore', *sys.argv[1:]]\n"
        "from tierstore.cli.entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(all(signal.getsignal(s) is signal.SIG_DFL "
        "for s in (signal.SIGTERM, signal.SIGHUP)))\n"
    )
    for argv in (["--help"], ["serve", "--listen", "nonsense"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120
        )
        assert done.stdout.splitlines()[-1] == "True", (argv, done.stdout, done.stderr)
