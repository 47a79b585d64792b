"""Fixtures for the ``tierstore`` command's tests."""

from __future__ import annotations

import dataclasses

import pytest

from tierstore.cli.state import State, state


@pytest.fixture(autouse=True)
def fresh_cli_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the options' defaults. A command run in this process leaves
    them in the process's one state (tierstore/cli/state.py): ``--json`` from an earlier
    test would turn a later ``simulate``'s table into JSON. (A real ``tierstore``
    process runs one command.)"""
    for field in dataclasses.fields(State):
        monkeypatch.setattr(state, field.name, getattr(State(), field.name))
