"""The client's default call deadlines, in a module of their own so that the CLI can name
them without importing gRPC."""

from __future__ import annotations

from tierstore.types import MAX_TTL_S

__all__ = ["DEFAULT_STREAM_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "MAX_TIMEOUT_S", "timeout_problem"]

#: Seconds a unary call may take by default.
DEFAULT_TIMEOUT_S = 30.0
#: Seconds a streamed transfer (a get or a put) may take by default.
DEFAULT_STREAM_TIMEOUT_S = 3600.0
#: The longest deadline a call may be given: ten years, as the longest TTL of a pin or
#: a token. gRPC counts a deadline in nanoseconds from its clock's epoch, and one past
#: about 9e9 s overflows into the past: every call then failed at once with
#: DEADLINE_EXCEEDED.
MAX_TIMEOUT_S = MAX_TTL_S


def timeout_problem(seconds: float) -> str | None:
    """What is wrong with ``seconds`` as a call's deadline, or None: it must be above 0
    and at most :data:`MAX_TIMEOUT_S` (NaN and infinity are neither)."""
    if 0 < seconds <= MAX_TIMEOUT_S:
        return None
    return (
        f"a number of seconds above 0 and at most {MAX_TIMEOUT_S:.0f} (ten years; for "
        f"no practical limit give that), not {_shortened(repr(seconds))}"
    )


def _shortened(text: str, most: int = 40) -> str:
    """``text``, or its start and "..." when it is longer than ``most`` characters
    (10**400 has 401 digits)."""
    return text if len(text) <= most else text[: most - 3] + "..."
