"""What the package ships beside its modules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tierstore

ROOT = Path(__file__).parents[1]


def test_the_package_ships_its_type_hints_to_its_users() -> None:
    # PEP 561: without py.typed in the wheel, a user's mypy found no types in tierstore
    # ("Cannot find implementation or library stub"), and every call was Any.
    assert (Path(tierstore.__file__).parent / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["tierstore"]
