from server.reply_collection import FIRST_POLL_S, MAX_POLL_S, send_and_collect


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
    _, clock, _ = collect({"a": 2.0, "b": 2.0 + 1e-9}, timeout_s=600)

    first = clock.sleeps[:5]
    assert first == [FIRST_POLL_S * 2**k for k in range(4)] + [MAX_POLL_S]
    assert max(clock.sleeps) == MAX_POLL_S


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
