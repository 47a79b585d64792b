"""The checks of tierstore.types, the layer every other one builds on: it loads nothing
but the standard library (DESIGN.md, section 3)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tierstore.errors import InvalidArgument
from tierstore.types import check_bool, whole_number


def test_importing_the_types_loads_no_numpy() -> None:
    # It imported numpy for its bool checks: 0.4 s of every command's start, and a
    # thread started before a node capped its heap arenas (tierstore.cli.entry).
    shown = subprocess.run(
        [sys.executable, "-c", "import sys, tierstore.types; print('numpy' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "False"


def test_numpy_bools_are_bools_and_no_whole_numbers() -> None:
    assert check_bool("flag", np.bool_(True)) is True
    assert check_bool("flag", False) is False
    assert whole_number(np.bool_(True)) is None and whole_number(True) is None
    assert whole_number(np.int64(3)) == 3
    with pytest.raises(InvalidArgument, match="flag must be True or False"):
        check_bool("flag", np.int64(1))
