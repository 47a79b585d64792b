"""SharedEpoch's record of the last epoch finished, without a DataLoader: which readers
are told that they read an epoch again (the warning of IterableDataset.__iter__)."""

from __future__ import annotations

from tierstore.torch.epochs import SharedEpoch


def test_a_worker_of_the_same_iteration_that_starts_late_is_not_of_a_later_one() -> None:
    # Worker 0 read its share of epoch 3 to its end before worker 1 of the same
    # iteration (base seed 77) began: worker 1 reads the epoch for the first time.
    epoch = SharedEpoch(3)
    epoch.finish(3, 77, 0)
    assert not epoch.finished_before(3, 77, 1)


def test_an_iteration_seeded_alike_is_told_by_a_worker_that_finished_in_it() -> None:
    # The loader drew base seed 77 again (seeded alike before each epoch): worker 0 of
    # the new iteration finds its own id among those that finished epoch 3.
    epoch = SharedEpoch(3)
    epoch.finish(3, 77, 0)
    epoch.finish(3, 77, 1)
    assert epoch.finished_before(3, 77, 0) and epoch.finished_before(3, 77, 1)
    assert not epoch.finished_before(4, 77, 0)  # another epoch


def test_another_iteration_is_told_by_its_seed_and_starts_a_new_record() -> None:
    epoch = SharedEpoch(3)
    epoch.finish(3, 77, 0)
    assert epoch.finished_before(3, 78, 1)
    epoch.finish(3, 78, 1)  # iteration 78 finished it now: worker 0 did not, in it
    assert not epoch.finished_before(3, 78, 0)
    assert epoch.finished_before(3, 78, 1)


def test_worker_ids_beyond_the_mask_are_told_by_the_seed_alone() -> None:
    epoch = SharedEpoch(0)
    epoch.finish(0, 5, 63)
    assert not epoch.finished_before(0, 5, 63)  # not kept: never warned wrongly
    assert epoch.finished_before(0, 6, 63)
    epoch.finish(0, 5, 62)
    assert epoch.finished_before(0, 5, 62)
