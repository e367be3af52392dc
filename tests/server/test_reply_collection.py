import pytest
from flwr.superlink.grid import InMemoryGrid

from fedge.server.reply_collection import (
    FIRST_POLL_S,
    IN_PROCESS_POLL_S,
    MAX_POLL_S,
    poll_intervals,
    send_and_collect,
)


class Reply:
    """Just what send_and_collect reads of a reply."""

    def __init__(self, message_id):
        self.metadata = type("Meta", (), {"reply_to_message_id": message_id})()


class ScriptedGrid:
    """Replies to message ``i`` once the fake clock reaches ``arrivals[i]``."""

    def __init__(self, arrivals, clock, unpushable=()):
        self.arrivals = arrivals
        self.clock = clock
        self.unpushable = set(unpushable)
        self.pulls = []

    def push_messages(self, messages):
        return [None if m in self.unpushable else m for m in messages]

    def pull_messages(self, message_ids):
        self.pulls.append((self.clock.now, sorted(message_ids)))
        return [
            Reply(i)
            for i in sorted(message_ids)
            if self.arrivals[i] is not None and self.arrivals[i] <= self.clock.now
        ]


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def collect(arrivals, timeout_s, unpushable=()):
    clock = Clock()
    grid = ScriptedGrid(arrivals, clock, unpushable)
    replies = send_and_collect(
        grid, list(arrivals), timeout_s=timeout_s, clock=clock, sleep=clock.sleep
    )
    return sorted(r.metadata.reply_to_message_id for r in replies), clock, grid


def test_replies_are_collected_soon_after_they_arrive_not_on_a_3_s_tick():
    got, clock, _ = collect({"a": 0.3, "b": 0.9}, timeout_s=600)

    assert got == ["a", "b"]
    # Noticed within one maximal poll interval of the last arrival.
    assert 0.9 <= clock.now <= 0.9 + MAX_POLL_S


def test_polling_backs_off_while_nothing_arrives_and_resets_after_a_reply():
    # "a" arrives at 2.0 s, "b" at 4.2 s. With FIRST_POLL_S = 0.05 and
    # MAX_POLL_S = 0.5, the waits double from 0.05 to the 0.5 cap: pulls at
    # 0.05, 0.15, 0.35, 0.75, 1.25, 1.75, then 2.25 finds "a". The back-off
    # starts again from 0.05: pulls at 2.30, 2.40, 2.60, 3.00, 3.50, 4.00,
    # then 4.50 finds "b".
    assert (FIRST_POLL_S, MAX_POLL_S) == (0.05, 0.5)
    backing_off = [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5]

    _, clock, grid = collect({"a": 2.0, "b": 4.2}, timeout_s=600)

    assert clock.sleeps == pytest.approx(backing_off + backing_off)
    pulled_at = [round(t, 2) for t, _ in grid.pulls]
    assert pulled_at[6:9] == [1.75, 2.25, 2.3]  # a short look right after "a"
    assert pulled_at[-1] == 4.5
    assert [ids for _, ids in grid.pulls[8:]] == [["b"]] * 7


def test_a_node_that_never_replies_is_given_up_at_the_timeout():
    got, clock, _ = collect({"a": 0.1, "silent": None}, timeout_s=5.0)

    assert got == ["a"]
    assert clock.now == 5.0  # the last sleep is cut to the deadline


def test_a_late_reply_is_left_out():
    got, _, _ = collect({"a": 0.1, "late": 7.0}, timeout_s=5.0)

    assert got == ["a"]


def test_a_message_the_superlink_refused_is_not_waited_for():
    got, clock, grid = collect({"a": 0.1, "refused": None}, 600, ["refused"])

    assert got == ["a"]
    assert all("refused" not in ids for _, ids in grid.pulls)
    assert clock.now < 1.0


class ScriptedSimulationGrid(ScriptedGrid, InMemoryGrid):
    """The scripted grid, as the simulation engine's grid type."""


def test_in_simulation_replies_are_pulled_every_10_ms_without_backing_off():
    clock = Clock()
    grid = ScriptedSimulationGrid({"a": 0.3, "b": 0.9}, clock)

    replies = send_and_collect(
        grid, ["a", "b"], timeout_s=600, clock=clock, sleep=clock.sleep
    )

    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert IN_PROCESS_POLL_S == 0.01
    assert clock.sleeps == pytest.approx([0.01] * len(clock.sleeps))
    assert 0.9 <= clock.now <= 0.9 + 0.01 + 1e-9  # the last reply seen at once


def test_poll_intervals_back_off_on_a_superlink_and_not_in_simulation():
    clock = Clock()

    assert poll_intervals(ScriptedGrid({}, clock)) == (FIRST_POLL_S, MAX_POLL_S)
    assert poll_intervals(ScriptedSimulationGrid({}, clock)) == (0.01, 0.01)
