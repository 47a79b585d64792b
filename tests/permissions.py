"""Running a command that files' permission bits bind, even as root."""

from __future__ import annotations

import os
import shutil

import pytest

#: the capabilities with which root reads, writes and searches whatever the mode bits say
_OVERRIDES = "-dac_override,-dac_read_search"


def bound_by_permissions(command: list[str]) -> list[str]:
    """``command``, run so that files' permission bits bind it: as root, through
    ``setpriv`` without the capabilities that override them (the test is skipped
    where there is no ``setpriv``); as any other user, as it is."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv for root to give up the power to override file modes")
    return ["setpriv", f"--inh-caps={_OVERRIDES}", f"--bounding-set={_OVERRIDES}", *command]
