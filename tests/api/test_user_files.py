"""A user's own client.py, server.py and shared.py beside them break nothing.

Each file exits the interpreter if imported. ``fedge simulate`` started from
that folder must train every virtual client (the old failure: Ray workers
imported the user's client.py, every client failed, and the run still ended
"complete" with the untrained model). A script in such a folder calling
``fedge.simulate`` is ``examples/own_model.py``'s test
(``tests/examples/test_examples.py``).
"""

from __future__ import annotations

import pytest

import fedge
from tests.fixtures.user_files import run_python, user_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fedge_simulate_from_a_folder_of_user_files_trains(tmp_path):
    folder = user_folder(tmp_path)

    run_python(
        [
            "-m", "fedge.cli.app", "simulate",
            "--clients", "2", "--rounds", "1",
            "--set", "local-epochs=1", "--set", "fairness-report=false",
            "--output-dir", "runs", "--run-name", "cli",
        ],
        cwd=folder,
    )  # fmt: skip

    run = fedge.Run(folder / "runs" / "cli")
    assert run.status == "complete"
    assert run.metrics.loc[1, "replies"] == 2
    assert run.metrics.loc[1, "failures"] == 0
