"""What ``fedge simulate`` echoes of Flower's log when not verbose."""

from fedge.simulations.simulate import _line_to_show

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

    shown = [s for line in log if (s := _line_to_show(line, seen))]

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

    shown = [s for line in lines if (s := _line_to_show(line, seen))]

    assert shown == [
        "WARNING fedge: round 1: 0 usable replies",
        "WARNING fedge: round 1: 0 usable replies",
        "ValueError: something real",
        "ValueError: something else",
    ]
