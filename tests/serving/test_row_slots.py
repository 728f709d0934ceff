"""The one row-slot index all slot layers share: plans per forward shape, rows followed through
generate's expansion, slot order, and the range/gather choice of the grouped product."""

import pytest
import torch

from persona_serving.row_slots import RowSlots, grouped_mm_works


@pytest.fixture()
def rows() -> RowSlots:
    return RowSlots(torch.device("cpu"), grouped=True)


def test_no_plan_when_no_row_has_an_adapter(rows: RowSlots):
    rows.set([0, 0, 0])
    assert rows.plan(3, 7) is None


def test_rows_in_slot_order_are_read_in_place_after_the_rows_without_adapter(rows: RowSlots):
    rows.set([0, 2, 2, 3])
    plan = rows.plan(4, 5)
    assert plan.order is None and plan.start == 1
    assert plan.slots == (1, 2) and plan.row_slots.tolist() == [1, 1, 2]
    assert plan.groups is None and plan.offs.tolist() == [10, 15]  # tokens, not rows


def test_rows_out_of_order_are_gathered_into_slot_order(rows: RowSlots):
    rows.set(torch.tensor([3, 0, 1, 3, 1]))
    plan = rows.plan(5, 1)
    assert plan.start == 0 and plan.order.tolist() == [2, 4, 0, 3]  # slot 1's rows, then slot 3's, stable
    assert plan.row_slots.tolist() == [0, 0, 2, 2]
    assert plan.groups is None and plan.offs.tolist() == [2, 2, 4]  # slot 2 is an empty group of the range


def test_a_sparse_range_is_gathered_instead_of_read_with_many_empty_groups(rows: RowSlots):
    rows.set([1, 30, 30])
    plan = rows.plan(3, 2)
    assert plan.groups.tolist() == [0, 29] and plan.offs.tolist() == [2, 6]


def test_the_slots_follow_rows_through_beams_and_return_sequences(rows: RowSlots):
    rows.set([2, 1])
    encoder, decoder = rows.plan(2, 9), rows.plan(6, 1)  # 3 beams (or return sequences) per row
    assert encoder.order.tolist() == [1, 0]
    assert decoder.order.tolist() == [3, 4, 5, 0, 1, 2] and decoder.row_slots.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(RuntimeError, match="a forward over 5 rows, but the row slots name 2 rows"):
        rows.plan(5, 1)


def test_plans_are_built_once_per_shape_until_the_next_batch(rows: RowSlots):
    rows.set([1, 1])
    assert rows.plan(2, 4) is rows.plan(2, 4) and rows.plan(2, 1) is not rows.plan(2, 4)
    first = rows.plan(2, 4)
    rows.set([1, 2])
    assert rows.plan(2, 4) is not first and rows.slots == [1, 2]
    with pytest.raises(ValueError, match=">= 0"):
        rows.set([1, -1])


def test_the_grouped_kernel_is_found_working_on_cpu():
    assert grouped_mm_works(torch.device("cpu"), torch.float32)
