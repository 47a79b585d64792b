"""The client makes pyarrow allocate from a fork-safe pool (tierstore/client/arrowpool.py).

Each case runs in a fresh interpreter: this one has imported the client already.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa

from tierstore.client.arrowpool import FORK_SAFE_BACKENDS, use_fork_safe_pool

#: Prints pyarrow's default pool before and after importing the client (as a DataLoader
#: worker's parent does), and how a forked child that allocates on a new thread exits.
_SCRIPT = """
import os, threading
import pyarrow as pa
before = pa.default_memory_pool().backend_name
import tierstore.client.client
after = pa.default_memory_pool().backend_name
child = os.fork()
if child == 0:
    worker = threading.Thread(target=lambda: pa.allocate_buffer(1 << 20))
    worker.start()
    worker.join()
    os._exit(0)
_, status = os.waitpid(child, 0)
print(before, after, os.waitstatus_to_exitcode(status))
"""


def run_script(**env: str) -> list[str]:
    return run_script_and_stderr(**env)[0]


def run_script_and_stderr(**env: str) -> tuple[list[str], str]:
    """What :data:`_SCRIPT` prints, split, and its stderr."""
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.split(), done.stderr


def test_the_client_replaces_mimalloc_with_a_fork_safe_pool() -> None:
    before, after, child_exit = run_script()
    assert after in FORK_SAFE_BACKENDS  # pyarrow's own default (before) is mimalloc
    assert after == before or before == "mimalloc"  # a safe pool is kept
    assert child_exit == "0"


def test_a_pool_chosen_with_the_environment_is_kept_with_a_warning_if_unsafe() -> None:
    (before, after, child_exit), stderr = run_script_and_stderr(
        ARROW_DEFAULT_MEMORY_POOL="mimalloc"
    )
    assert before == after == "mimalloc"
    assert child_exit == "0"
    # Kept, but the hazard is named: a DataLoader's workers can hang for good.
    assert "RuntimeWarning: ARROW_DEFAULT_MEMORY_POOL=mimalloc" in stderr
    assert "allocates from mimalloc" in stderr
    assert "unset it" in stderr


def test_a_fork_safe_pool_chosen_with_the_environment_is_kept_silently() -> None:
    (before, after, child_exit), stderr = run_script_and_stderr(ARROW_DEFAULT_MEMORY_POOL="system")
    assert before == after == "system"
    assert child_exit == "0"
    assert "ARROW_DEFAULT_MEMORY_POOL" not in stderr  # no warning of ours


def test_use_fork_safe_pool_is_idempotent_and_keeps_a_safe_pool() -> None:
    first = use_fork_safe_pool()
    assert first in FORK_SAFE_BACKENDS  # this process imported the client already
    assert use_fork_safe_pool() == first == pa.default_memory_pool().backend_name
