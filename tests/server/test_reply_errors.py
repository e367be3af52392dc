"""An error reply's reason in one line, and a round in which every node failed alike."""

import pytest

from fedge.server.reply_errors import (
    common_failure,
    count_errors,
    describe_error,
    likely_cause,
    with_likely_cause,
)

SHADOWED = "ModuleNotFoundError: No module named 'client.client_app'; 'client' is not a package"


def ray_reason(pid: int) -> str:
    """A simulated node's reason as Flower's engine builds it, from a real run's log."""
    text = (
        f"ray::ClientAppActor.run() (pid={pid}, ip=192.0.2.2, actor_id=0357918e{pid}, "
        "repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at "
        f"0x7fd6{pid}>)\n"
        "  At least one of the input arguments for this task could not be computed:\n"
        "ray.exceptions.RaySystemError: System error: No module named "
        "'client.client_app'; 'client' is not a package\n"
        "traceback: Traceback (most recent call last):\n"
        "          ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        f"{SHADOWED}"
    )
    return f"<class 'ray.exceptions.RayTaskError(RaySystemError)'>:<'{text}'>"


DROPOUT_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'"
    "ray::ClientAppActor.run() (pid=7688, ip=192.0.2.2)\n"
    '  File "/app/simulations/fault_injection.py", line 413, in _delegate\n'
    "    raise RuntimeError(\n"
    "RuntimeError: simulated dropout: partition 0 fails in round 1\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "ray::ClientAppActor.run() (pid=7688, ip=192.0.2.2)\n"
    "    raise ClientAppException(str(ex)) from ex\n"
    "flwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: simulated dropout: "
    "partition 0 fails in round 1'>"
)


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        (ray_reason(5337), SHADOWED),
        # the wrapped exception, not Flower's ClientAppException around it
        (
            DROPOUT_REASON,
            "RuntimeError: simulated dropout: partition 0 fails in round 1",
        ),
        # a deployed node: Flower's format around str(exception)
        (
            "<class 'ValueError'>:<'x has 3 columns, expected 4'>",
            "ValueError: x has 3 columns, expected 4",
        ),
        (
            "An exception was raised when attempting to load `ClientApp`",
            "An exception was raised when attempting to load `ClientApp`",
        ),
        ("Node Unavailable", "Node Unavailable"),
        ("", "unknown error"),
    ],
)
def test_a_reason_comes_down_to_the_exception_line_a_person_would_quote(reason, line):
    assert describe_error(reason) == line


def test_two_nodes_failing_alike_describe_the_same_line_though_their_pids_differ():
    assert ray_reason(5337) != ray_reason(5338)
    assert describe_error(ray_reason(5337)) == describe_error(ray_reason(5338))


def test_a_shadowed_package_is_named_as_the_likely_cause():
    cause = likely_cause(SHADOWED)

    assert cause == (
        "a module named 'client' that is not a package, such as a file client.py in "
        "the folder the run or node was started from, hides the app's 'client' "
        "package; rename that file or start from another folder"
    )
    assert with_likely_cause(SHADOWED) == f"{SHADOWED} (likely cause: {cause})"


def test_a_missing_module_and_an_unknown_error():
    assert likely_cause("ModuleNotFoundError: No module named 'opacus'") == (
        "'opacus' cannot be imported where the nodes run; install the app's "
        "dependencies there"
    )
    assert likely_cause("RuntimeError: CUDA out of memory") is None
    assert with_likely_cause("RuntimeError: boom") == "RuntimeError: boom"


def test_every_sampled_node_failing_alike_is_one_line():
    errors = [describe_error(ray_reason(pid)) for pid in (1, 2, 3)]

    assert common_failure(3, errors) == (
        f"all 3 sampled nodes failed with the same error: {with_likely_cause(SHADOWED)}"
    )
    assert common_failure(1, ["RuntimeError: boom"]) == (
        "the 1 sampled node failed with the same error: RuntimeError: boom"
    )


@pytest.mark.parametrize(
    ("sampled", "errors"),
    [
        (3, ["E: a", "E: a"]),  # the third node did not reply (or replied fine)
        (2, ["E: a", "E: b"]),  # two different errors
        (0, []),
        (2, []),
    ],
)
def test_no_common_failure_unless_every_sampled_node_failed_the_same_way(
    sampled, errors
):
    assert common_failure(sampled, errors) is None


def test_errors_are_counted_most_frequent_first():
    assert list(count_errors(["E: b", "E: a", "E: a"]).items()) == [
        ("E: a", 2),
        ("E: b", 1),
    ]
