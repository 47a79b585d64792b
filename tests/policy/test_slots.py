"""The slot table: keys to dense slots, growth, and the FIFO queues threaded through it,
checked against plain Python lists."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tierstore.policy.slots import NIL, SlotTable


def test_slots_are_dense_and_reused() -> None:
    table = SlotTable()
    assert [table.add(key) for key in "abc"] == [0, 1, 2]
    assert table.add("b") == 1
    table.release(1)
    assert table.slot("b") == NIL
    assert table.add("d") == 1
    assert table.key(1) == "d"
    assert len(table) == 3


def test_growth_keeps_state_and_released_slots_are_reset() -> None:
    table = SlotTable(queues=1, initial_capacity=16)
    table.add_array("score", np.float32, fill=-1.0)
    for key in range(100):
        slot = table.add(key)
        table.size[slot] = key
        table.view("score")[slot] = key / 2
        table.push(0, slot)
    assert table.capacity >= 100
    assert list(table.oldest_first(0)) == list(range(100))
    assert table.array("score")[99] == 49.5
    table.release(table.slot(5))
    assert table.size[5] == 0
    assert table.array("score")[5] == -1.0
    assert table.bytes[0] == sum(range(100)) - 5


OPS = st.lists(
    st.tuples(st.sampled_from(["push", "unlink", "head", "resize"]), st.integers(0, 9)),
    max_size=80,
)


@settings(max_examples=100, deadline=None)
@given(ops=OPS)
def test_queues_match_a_list_model(ops: list[tuple[str, int]]) -> None:
    table = SlotTable(queues=2)
    model: list[list[int]] = [[], []]  # oldest first
    sizes = {}
    for op, key in ops:
        slot = table.add(key)
        queue = key % 2
        where = table.queue_of(slot)
        if op == "push" and where == NIL:
            table.push(queue, slot)
            model[queue].append(slot)
        elif op == "unlink" and where != NIL:
            table.unlink(slot)
            model[where].remove(slot)
        elif op == "head":
            table.move_to_head(queue, slot)
            if where != NIL:
                model[where].remove(slot)
            model[queue].append(slot)
        elif op == "resize":
            table.resize(slot, key + 1)
        sizes[slot] = table.size[slot]
    for queue in (0, 1):
        assert list(table.oldest_first(queue)) == model[queue]
        assert table.counts[queue] == len(model[queue])
        assert table.bytes[queue] == sum(sizes[slot] for slot in model[queue])
