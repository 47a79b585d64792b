"""create_dataset(exist_ok=True) and dataset create --exist-ok: the create, or the
dataset as it is (tierstore.client.admincalls.create_or_take)."""

from __future__ import annotations

import pytest

from tierstore.client.admincalls import create_or_take, dataset_settings_asked
from tierstore.errors import AlreadyExists, DatasetNotFound
from tierstore.types import DatasetSettings

ASKED = dataset_settings_asked(encrypted=False)


def test_a_dataset_deleted_between_the_create_and_the_read_is_made_again() -> None:
    # A review's probe: it raised DatasetNotFound from a create.
    answers: list[object] = [AlreadyExists("exists"), ASKED]
    reads: list[str] = []

    def create() -> DatasetSettings:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, DatasetSettings)
        return answer

    def get() -> DatasetSettings:
        reads.append("read")
        raise DatasetNotFound("no dataset 'd'")

    assert create_or_take("d", ASKED, create, get) == (ASKED, True)
    assert reads == ["read"]


def test_an_existing_dataset_as_asked_is_taken_and_one_of_other_settings_refused() -> None:
    def exists() -> DatasetSettings:
        raise AlreadyExists("exists")

    assert create_or_take("d", ASKED, exists, lambda: ASKED) == (ASKED, False)
    other = DatasetSettings(encrypted=True)
    with pytest.raises(AlreadyExists, match=r"encrypted True \(asked False\); --x takes it"):
        create_or_take("d", ASKED, exists, lambda: other, "--x")


def test_an_empty_policy_is_asked_as_the_default_the_node_makes_of_it() -> None:
    # The node stores "" as its default policy: asked again, exist_ok refused it.
    assert dataset_settings_asked(policy="") == dataset_settings_asked()
