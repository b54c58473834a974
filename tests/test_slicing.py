"""A task's slices: a quarter of its items, but never less than one device batch."""

from __future__ import annotations

from types import SimpleNamespace

from pervade.worker.tasks import MIN_SLICE, slice_size


def test_slices_are_a_quarter_of_the_task_but_at_least_a_device_batch() -> None:
    assert slice_size(400, object()) == 100  # a context that says nothing of batches
    assert slice_size(20, object()) == MIN_SLICE
    engine = SimpleNamespace(batch_size=128)
    assert slice_size(400, engine) == 128  # not 100: the device's batch stays full
    assert slice_size(2000, engine) == 512  # not 500: whole batches, the last slice part
    assert slice_size(1024, engine) == 256
    assert slice_size(20, SimpleNamespace(batch_size="big")) == MIN_SLICE  # not a number
