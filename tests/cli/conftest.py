"""Fixtures for the ``tierstore`` command's tests."""

from __future__ import annotations

import pytest

from tierstore.cli import main


@pytest.fixture(autouse=True)
def fresh_cli_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the options' defaults. A command run in this process leaves
    them in the module's state (``--json`` from an earlier test would turn a later
    ``simulate``'s table into JSON); a real ``tierstore`` process runs one command."""
    monkeypatch.setattr(main, "state", main._State())
