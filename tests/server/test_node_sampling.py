import random

import pytest

from fedge.server.node_sampling import (
    NodeSnapshot,
    RoundAbort,
    round_seed,
    sampling_rng,
    seeded_sampling,
    wait_for_nodes,
)
from fedge.shared.errors import FedgeError


class FakeClock:
    """Time that passes only when someone sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_sorted_nodes_at_once_when_enough(fakes):
    clock = FakeClock()
    ids = wait_for_nodes(
        fakes.FakeGrid([9, 3, 5]),
        min_nodes=2,
        timeout_s=30,
        clock=clock,
        sleep=clock.sleep,
    )
    assert ids == [3, 5, 9]
    assert clock.sleeps == []


def test_timeout_fires_with_a_clear_message(fakes):
    clock = FakeClock()
    with pytest.raises(
        RoundAbort,
        match=r"^Only 1 of 2 nodes connected after 30 s; ending the run, "
        r"checkpoints kept in runs/r1/checkpoints\. Start the missing",
    ):
        wait_for_nodes(
            fakes.FakeGrid([4]),
            min_nodes=2,
            timeout_s=30,
            poll_s=1.0,
            checkpoint_dir="runs/r1/checkpoints",
            clock=clock,
            sleep=clock.sleep,
        )
    # gave up at the deadline, not before and not long after
    assert clock.now == pytest.approx(30.0)
    assert max(clock.sleeps) <= 1.0


def test_round_abort_is_a_fedge_error():
    assert issubclass(RoundAbort, FedgeError)
    assert issubclass(RoundAbort, RuntimeError)


def test_nodes_arriving_late_end_the_wait(fakes):
    clock = FakeClock()
    arrivals = iter([[1], [1], [1], [1, 2]])
    grid = fakes.FakeGrid(lambda: next(arrivals))
    ids = wait_for_nodes(
        grid, min_nodes=2, timeout_s=30, clock=clock, sleep=clock.sleep
    )
    assert ids == [1, 2]
    assert clock.now == pytest.approx(3.0)


def test_wait_logs_progress(fakes, caplog):
    clock = FakeClock()
    with (
        caplog.at_level("INFO", logger="fedge.server.node_sampling"),
        pytest.raises(RoundAbort),
    ):
        wait_for_nodes(
            fakes.FakeGrid([]),
            min_nodes=1,
            timeout_s=25,
            clock=clock,
            sleep=clock.sleep,
        )
    # logged at 0 s, 10 s and 20 s, not at every one-second poll
    assert caplog.text.count("Waiting for nodes: 0 of 1 connected") == 3


@pytest.mark.parametrize("seed", [0, 1, 12345, -7])
def test_round_seed_depends_on_seed_round_and_stage_only(seed):
    assert round_seed(seed, 3) == round_seed(seed, 3, "train")
    others = {
        round_seed(seed, 4),
        round_seed(seed + 1, 3),
        round_seed(seed, 3, "evaluate"),
    }
    assert round_seed(seed, 3) not in others and len(others) == 3
    a, b = sampling_rng(seed, 3), sampling_rng(seed, 3)
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match=r"stage must be one of .* got 'fit'"):
        round_seed(0, 1, "fit")


def test_seeded_sampling_leaves_the_global_generator_as_it_was():
    random.seed(5)
    expected = [random.random() for _ in range(3)]
    random.seed(5)
    with seeded_sampling(123):
        inside = random.random()
    after = [random.random() for _ in range(3)]
    assert after == expected
    with seeded_sampling(123):
        assert random.random() == inside


def test_node_snapshot_is_sorted_and_fixed(fakes):
    grid = fakes.FakeGrid([5, 1, 3])
    snap = NodeSnapshot(grid, grid.get_node_ids())
    grid._node_ids = [1]  # a node leaves after the snapshot
    assert snap.get_node_ids() == [1, 3, 5]
    assert snap.calls == 1  # other attributes come from the real grid
