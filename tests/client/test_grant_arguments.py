"""A token's grants as the client library takes them (create_token, grant): each is
checked before any request is made, so a mistake gets InvalidArgument, not a KeyError
or TypeError from deep inside."""

from __future__ import annotations

from typing import Any

import pytest

from tierstore.client.arguments import grant_list
from tierstore.errors import InvalidArgument
from tierstore.types import Grant, Role


@pytest.mark.parametrize(
    ("grant", "said"),
    [
        (Grant("d", "raeder"), r"'raeder' is not a role \(the roles are reader, writer, admin\)"),  # type: ignore[arg-type]
        (Grant("d", None), "None is not a role"),  # type: ignore[arg-type]
        (Grant(5, Role.READER), "a grant's dataset must be a str"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_grant_is_refused_by_name(grant: Grant, said: str) -> None:
    with pytest.raises(InvalidArgument, match=said):
        grant_list([grant])


def test_a_role_given_by_its_name_is_taken_as_the_role() -> None:
    given: list[Any] = [Grant("d", "writer"), Grant("*", Role.READER)]  # type: ignore[arg-type]
    assert grant_list(given) == [Grant("d", Role.WRITER), Grant("*", Role.READER)]
    assert all(type(grant.role) is Role for grant in grant_list(given))
