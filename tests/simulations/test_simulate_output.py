"""What ``fedge simulate`` echoes of Flower's log when not verbose."""

from fedge.simulations.flwr_stream import line_to_show

SHADOWED = "ModuleNotFoundError: No module named 'client.client_app'; 'client' is not a package"
ROUND_LINE = (
    "WARNING fedge: Round {r}: all 2 sampled nodes failed with the same error: "
    f"{SHADOWED} (likely cause: ...); no update was aggregated, the global model "
    "is unchanged."
)


def node_failure(pid: int) -> list[str]:
    """The lines the simulation engine logs for one node's failure (a real run's)."""
    return [
        "ERROR :     An exception was raised when processing a message by RayBackend",
        f"ERROR :     ray::ClientAppActor.run() (pid={pid}, ip=192.0.2.2, actor_id=03)",
        "  At least one of the input arguments for this task could not be computed:",
        "ray.exceptions.RaySystemError: System error: No module named "
        "'client.client_app'; 'client' is not a package",
        "traceback: Traceback (most recent call last):",
        SHADOWED,
        "ERROR :     Traceback (most recent call last):",
        f"(ClientAppActor pid={pid}) No module named 'client.client_app'; 'client' is not a package",
        f"(ClientAppActor pid={pid}) {SHADOWED}",
    ]


def test_an_error_every_node_repeats_each_round_is_shown_once_beside_the_round_lines():
    seen: set[str] = set()
    log = []
    for server_round in (1, 2):
        log += node_failure(5337) + node_failure(5338)
        log.append(ROUND_LINE.format(r=server_round))
        log.append(f"INFO fedge: round {server_round}/2  accuracy 0.0422")

    shown = [s for line in log if (s := line_to_show(line, seen))]

    assert shown == [
        SHADOWED,
        ROUND_LINE.format(r=1),
        "INFO fedge: round 1/2  accuracy 0.0422",
        ROUND_LINE.format(r=2),
        "INFO fedge: round 2/2  accuracy 0.0422",
    ]


def test_fedge_lines_are_never_held_back_and_a_new_error_is_shown():
    seen: set[str] = set()
    lines = [
        "WARNING fedge: round 1: 0 usable replies",
        "WARNING fedge: round 1: 0 usable replies",
        "ValueError: something real",
        "(ClientAppActor pid=1) ValueError: something real",
        "ValueError: something else",
    ]

    shown = [s for line in lines if (s := line_to_show(line, seen))]

    assert shown == [
        "WARNING fedge: round 1: 0 usable replies",
        "WARNING fedge: round 1: 0 usable replies",
        "ValueError: something real",
        "ValueError: something else",
    ]


# A stand-in for `flwr run`: the ServerApp's last line comes 0.5 s after the
# run folder said complete, then the process would run on for a minute.
LATE_LAST_LINE = (
    "import time\n"
    "print('INFO fedge: round 5/5  accuracy 0.96', flush=True)\n"
    "time.sleep(0.5)\n"
    "print('INFO fedge: fedge run complete: accuracy 0.96 after round 5', flush=True)\n"
    "time.sleep(60)\n"
)


def stream_after_complete(tmp_path, script, monkeypatch, wait_s):
    import sys
    import threading
    import time

    from fedge.simulations import flwr_stream

    monkeypatch.setattr(flwr_stream, "LAST_LINE_WAIT_S", wait_s)
    complete = threading.Event()
    complete.set()  # the run folder says complete from the start
    shown: list[str] = []
    started = time.monotonic()
    flwr_stream.stream_flwr_run(
        [sys.executable, "-c", script],
        {},
        tmp_path / "flower.log",
        cwd=tmp_path,
        verbose=False,
        echo=shown.append,
        stop_when=complete,
    )
    return shown, time.monotonic() - started


def test_a_completed_runs_processes_end_after_its_last_line_came_through(
    tmp_path, monkeypatch
):
    shown, took_s = stream_after_complete(
        tmp_path, LATE_LAST_LINE, monkeypatch, wait_s=10.0
    )

    assert shown[-1].startswith("INFO fedge: fedge run complete")
    assert "fedge run complete" in (tmp_path / "flower.log").read_text()
    assert took_s < 5.0  # ended at the line, not after the wait or the minute


def test_a_completed_runs_processes_end_without_a_last_line_after_the_wait(
    tmp_path, monkeypatch
):
    silent = "import time\ntime.sleep(60)\n"

    shown, took_s = stream_after_complete(tmp_path, silent, monkeypatch, wait_s=0.3)

    assert shown == []
    assert took_s < 5.0
