"""Policies by name: every name builds its policy; bad names and options fail clearly;
importing the registry pulls no policy module (nor numba)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tierstore.errors import InvalidArgument, UnknownPolicy
from tierstore.policy.base import Policy
from tierstore.policy.registry import (
    DEFAULT_POLICY,
    OFFLINE_POLICY_NAMES,
    POLICY_NAMES,
    make_policy,
)


def test_names() -> None:
    assert POLICY_NAMES == ("lru", "s3fifo", "epoch-pin", "clairvoyant")
    assert OFFLINE_POLICY_NAMES == ("belady", "belady-size")
    assert DEFAULT_POLICY in POLICY_NAMES


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_live_name_builds_its_policy(name: str) -> None:
    policy = make_policy(name)
    assert isinstance(policy, Policy)
    assert policy.name == name


@pytest.mark.parametrize("name", OFFLINE_POLICY_NAMES)
def test_offline_policies_need_the_future(name: str) -> None:
    with pytest.raises(InvalidArgument, match="offline-only") as refused:
        make_policy(name)
    # An admin's `policy set` reads it too: it names what a dataset may take.
    assert "a dataset's policy is one of " in str(refused.value) and "lru" in str(refused.value)
    assert make_policy(name, future=[1, 2, 1]).name == name


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(
        UnknownPolicy, match=r"valid names: lru, s3fifo.*\(and, in the simulator only, belady"
    ):
        make_policy("arc")


def test_options_reach_the_constructor_and_bad_ones_are_refused() -> None:
    assert make_policy("clairvoyant", plan_ttl_s=5.0) is not None
    with pytest.raises(InvalidArgument, match="bad options"):
        make_policy("lru", plan_ttl_s=5.0)
    with pytest.raises(InvalidArgument, match="takes no future"):
        make_policy("lru", future=[1])


def test_importing_the_registry_is_light() -> None:
    code = (
        "import sys, tierstore.policy.registry as r; "
        "print('numba' in sys.modules, 'tierstore.policy.clairvoyant' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name", POLICY_NAMES + OFFLINE_POLICY_NAMES)
def test_every_policy_keeps_within_the_metadata_budget(name: str) -> None:
    future = [1] if name in OFFLINE_POLICY_NAMES else None
    assert 0 < make_policy(name, future=future).metadata_bytes_per_shard() <= 64
