"""Policies by name, imported lazily.

The registry maps each name to a dotted path, and imports the module only when a
policy of that name is made, so importing the registry (the CLI, the server's
settings) never pulls numba or the policies' numpy state.

Live policies need nothing but their options; offline policies also need ``future``,
the whole sequence of keys the driver will read (only a simulator knows it).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from tierstore.errors import InvalidArgument, UnknownPolicy
from tierstore.plans import MAX_PLAN_TTL_S
from tierstore.policy.base import Key, Policy

__all__ = [
    "DEFAULT_POLICY",
    "OFFLINE_POLICY_NAMES",
    "POLICY_NAMES",
    "check_policy_name",
    "make_driven_policy",
    "make_policy",
]

#: name -> "module:Class" of the live policies (usable by the engine).
_LIVE: dict[str, str] = {
    "lru": "tierstore.policy.lru:LruPolicy",
    "s3fifo": "tierstore.policy.s3fifo:S3FifoPolicy",
    "epoch-pin": "tierstore.policy.epoch_pin:EpochPinPolicy",
    "clairvoyant": "tierstore.policy.clairvoyant:ClairvoyantPolicy",
}
#: name -> "module:Class" of the offline policies (they are given the future).
_OFFLINE: dict[str, str] = {
    "belady": "tierstore.policy.belady:BeladyPolicy",
    "belady-size": "tierstore.policy.belady:BeladySizePolicy",
}

POLICY_NAMES: tuple[str, ...] = tuple(_LIVE)
OFFLINE_POLICY_NAMES: tuple[str, ...] = tuple(_OFFLINE)
DEFAULT_POLICY = "clairvoyant"


def _load(name: str, path: str) -> type[Policy]:
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        # A registered policy whose module is not built yet: as if unregistered.
        raise UnknownPolicy(f"placement policy {name!r} is not available yet") from exc
    cls: type[Policy] = getattr(module, class_name)
    return cls


def check_policy_name(name: str) -> None:
    """Raise UnknownPolicy (listing the valid names) if no policy answers to ``name``."""
    if name not in _LIVE and name not in _OFFLINE:
        raise UnknownPolicy(
            f"no placement policy is called {name[:80]!r}; valid names: "
            f"{', '.join(POLICY_NAMES)} (and, in the simulator only, "
            f"{', '.join(OFFLINE_POLICY_NAMES)})"
        )


def make_policy(name: str, *, future: Sequence[Key] | None = None, **options: Any) -> Policy:
    """A new policy called ``name``, built with ``options`` (its constructor's keyword
    arguments).

    Raises UnknownPolicy (listing the valid names) for a name no policy answers to;
    InvalidArgument when an offline policy is asked for without ``future``, or a
    live one with it, or for options the policy does not take.
    """
    check_policy_name(name)
    if name in _OFFLINE:
        if future is None:
            raise InvalidArgument(
                f"{name} is offline-only: it needs every key that will be read, in order "
                "(future=), which only a trace simulator knows (`tierstore simulate` "
                f"compares it); a dataset's policy is one of {', '.join(sorted(_LIVE))}"
            )
        return _build(name, _OFFLINE[name], future=future, **options)
    if future is not None:
        raise InvalidArgument(f"{name} is a live policy; it takes no future=")
    return _build(name, _LIVE[name], **options)


def make_driven_policy(name: str) -> Policy:
    """A new live ``name`` policy as a driver that ends plans itself runs it: the engine
    (tierstore.engine.planbook), and a replay of a trace, which holds each plan's end.
    A policy that keeps a plan TTL of its own is given the longest, so it never drops
    a plan the driver keeps (a replay that dropped them after the policy's default
    disagreed with the node it was traced on). Raises as :func:`make_policy`."""
    try:
        return make_policy(name, plan_ttl_s=MAX_PLAN_TTL_S)
    except UnknownPolicy:
        raise
    except InvalidArgument:  # a policy without a plan TTL of its own (or offline)
        return make_policy(name)


def _build(name: str, path: str, **options: Any) -> Policy:
    cls = _load(name, path)
    try:
        # Bind first, so a TypeError raised inside a constructor is not mistaken for
        # a caller's bad option.
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise InvalidArgument(f"bad options for policy {name!r}: {exc}") from exc
    return cls(**options)
