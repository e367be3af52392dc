"""Time the ServerApp's own run by phase, the fake nodes' time left out.

:func:`timed_production_run` wraps, for one block, the production functions a
run calls (the strategy wrapper's hooks, the reply checks,
:class:`~fedge.server.round_end.RoundEnd`'s steps, central and per-client evaluation) so that a :class:`PhaseClock` adds up
their wall time per round; everything is restored when the block ends.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import fedge.server.federation
from fedge.server.client_evaluation import evaluate_every_node
from fedge.server.federation_loop import RoundOutcome
from fedge.server.reply_check import ReplyCheck
from fedge.server.robust_strategy import RobustStrategy
from fedge.server.round_end import RoundEnd
from fedge.shared.evaluation import evaluate_model

PHASES = (
    "configure",
    "validate",
    "aggregate",
    "stop_check",
    "central_eval",
    "history",
    "checkpoint",
    "other",
)
CLIENT_EVAL = "client_eval"


class PhaseClock:
    """Seconds per phase and per round, the clients' time left out of each.

    Parameters
    ----------
    client_s : callable
        Seconds spent so far building the nodes' replies (``ReplyingGrid.client_s``).
    clock : callable, default ``time.perf_counter``
        The time source, in seconds.
    """

    def __init__(
        self,
        client_s: Callable[[], float],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._client_s = client_s
        self._clock = clock
        self.current: dict[str, float] = {}
        self.rounds: list[dict[str, float]] = []
        self._round_started: tuple[float, float] | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall time, less the clients', to phase ``name``."""
        started, client_s = self._clock(), self._client_s()
        try:
            yield
        finally:
            elapsed = self._clock() - started - (self._client_s() - client_s)
            self.current[name] = self.current.get(name, 0.0) + elapsed

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with each call timed as phase ``name`` (iterators materialised)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                result = fn(*args, **kwargs)
                # configure_train may return a lazy iterator: build it here.
                return list(result) if isinstance(result, Iterator) else result

        return wrapper

    def start_round(self) -> None:
        """Begin a round: what came before (start-up, round 0's evaluation) is not its."""
        self.current = {}
        self._round_started = (self._clock(), self._client_s())

    def end_round(self) -> None:
        """Close the round: append its phases, ``total`` and ``client_eval``.

        ``total`` is the round's wall time less the clients' and less the
        per-client evaluation; ``other`` is what no phase covers.
        """
        if self._round_started is None:
            raise RuntimeError("end_round called before start_round")
        started, client_s = self._round_started
        wall = self._clock() - started - (self._client_s() - client_s)
        times, self.current, self._round_started = self.current, {}, None
        client_eval = times.pop(CLIENT_EVAL, 0.0)
        measured = [phase for phase in PHASES if phase != "other"]
        for phase in measured:
            times.setdefault(phase, 0.0)
        total = wall - client_eval
        times["other"] = total - sum(times[phase] for phase in measured)
        times["total"] = total
        times[CLIENT_EVAL] = client_eval
        self.rounds.append(times)


@contextlib.contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set attribute ``name`` of ``owner`` (a class or module) inside the block.

    The attribute must exist (a renamed production function fails loudly here
    instead of going untimed); its own value comes back afterwards.

    Raises
    ------
    AttributeError
        When ``owner`` has no attribute ``name``.
    """
    if not hasattr(owner, name):
        raise AttributeError(f"{owner!r} has no attribute {name!r} to time")
    own = vars(owner)
    had_own, original = name in own, own.get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


@contextlib.contextmanager
def timed_production_run(
    client_s: Callable[[], float],
    *,
    after_round: Callable[[RoundEnd, RoundOutcome], None] | None = None,
) -> Iterator[PhaseClock]:
    """Time the production functions a run calls, as phases of its rounds.

    Inside the block, :func:`fedge.server.federation.run_federation` runs unchanged
    but its strategy wrapper, reply checks, round end, central evaluation and per-client
    evaluation are timed by a :class:`PhaseClock`; everything is restored when
    the block ends. A round starts when its training is configured and ends
    when :class:`~fedge.server.round_end.RoundEnd` has recorded it; ``after_round``,
    when given, is then called with the round end and the round's outcome.
    The block's value is the clock, whose ``rounds`` fill as rounds end.
    """
    clock = PhaseClock(client_s)
    from_config = RobustStrategy.from_config

    def built(*args: Any, **kwargs: Any) -> RobustStrategy:
        strategy = from_config(*args, **kwargs)
        # Instance attributes shadow the methods: the strategy chain the
        # checkpoint walks stays as in a real run.
        configure = clock.timed("configure", strategy.configure_train)

        def configure_train(*call_args: Any, **call_kwargs: Any) -> Any:
            clock.start_round()
            return configure(*call_args, **call_kwargs)

        strategy.configure_train = configure_train  # type: ignore[method-assign]  # timed, same signature
        strategy.aggregate_train = clock.timed(  # type: ignore[method-assign]  # timed, same signature
            "aggregate", strategy.aggregate_train
        )
        return strategy

    round_end = RoundEnd.__call__

    def end_of_round(self: RoundEnd, outcome: RoundOutcome) -> None:
        round_end(self, outcome)
        clock.end_round()
        if after_round is not None:
            after_round(self, outcome)

    with contextlib.ExitStack() as stack:
        for owner, name, value in (
            (RobustStrategy, "from_config", staticmethod(built)),
            (
                ReplyCheck,
                "check_train",
                clock.timed("validate", ReplyCheck.check_train),
            ),
            (RoundEnd, "stop_reason", clock.timed("stop_check", RoundEnd.stop_reason)),
            (RoundEnd, "record", clock.timed("history", RoundEnd.record)),
            (RoundEnd, "checkpoint", clock.timed("checkpoint", RoundEnd.checkpoint)),
            (RoundEnd, "__call__", end_of_round),
            # The names run_federation calls them by, in its own module.
            (
                fedge.server.federation,
                "evaluate_model",
                clock.timed("central_eval", evaluate_model),
            ),
            (
                fedge.server.federation,
                "evaluate_every_node",
                clock.timed(CLIENT_EVAL, evaluate_every_node),
            ),
        ):
            stack.enter_context(replaced(owner, name, value))
        yield clock
