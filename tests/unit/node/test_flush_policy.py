"""The settler's batch flush policy: a full batch goes at once; otherwise after `idle` seconds
without a new receipt, or once the oldest has waited `max_age` (steady traffic never idles)."""

from __future__ import annotations

import pytest

from haca.node.settler import FlushPolicy
from haca.types.batch import MAX_BATCH_ITEMS

POLICY = FlushPolicy(max_receipts=100, idle=0.5, max_age=5.0)


def test_a_full_batch_is_due_at_once():
    assert POLICY.due(100, now=10.0, last_queued=10.0, first_queued=10.0)
    assert not POLICY.due(99, now=10.0, last_queued=10.0, first_queued=10.0)


def test_a_pause_in_traffic_flushes_what_waits():
    assert not POLICY.due(3, now=10.4, last_queued=10.0, first_queued=9.0)
    assert POLICY.due(3, now=10.5, last_queued=10.0, first_queued=9.0)


def test_steady_traffic_flushes_at_the_max_age():
    # a receipt every 0.1 s never leaves the node idle for 0.5 s
    assert not POLICY.due(40, now=14.9, last_queued=14.85, first_queued=10.0)
    assert POLICY.due(40, now=15.0, last_queued=14.95, first_queued=10.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_receipts": 0}, {"max_receipts": MAX_BATCH_ITEMS + 1}, {"idle": 0}, {"max_age": -1}],
)
def test_a_policy_outside_its_bounds_is_refused(kwargs):
    with pytest.raises(ValueError):
        FlushPolicy(**kwargs)
