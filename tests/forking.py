"""fork() while another thread holds a lock: what a child inherits from a parent whose
threads were busy (a DataLoader forks its workers whenever the training loop says)."""

from __future__ import annotations

import os
import signal
import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager

#: seconds a child may take before it is taken for hung (on a lock it inherited held)
CHILD_DEADLINE_S = 10


def exit_code_of_child_forked_while_held(
    lock: AbstractContextManager[object], child: Callable[[], None]
) -> int:
    """Fork while another thread holds ``lock``; the child runs ``child`` and exits: 0
    if it returned, 1 if it raised (its traceback on stderr), killed by SIGALRM (exit
    code -14) if it took longer than :data:`CHILD_DEADLINE_S`. The holder lets go once
    the parent has forked. Returns the child's exit code, as
    :func:`os.waitstatus_to_exitcode` gives it."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(CHILD_DEADLINE_S)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(CHILD_DEADLINE_S)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
        signal.alarm(CHILD_DEADLINE_S)  # a lock left held would hang the child: it dies
        code = 1
        try:
            child()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    release.set()
    holder.join()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
