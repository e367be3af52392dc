import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedge.cli.app import main as fedge


def main(argv):
    return fedge(["privacy", *argv])


def run_json(capsys, *argv):
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def opacus_epsilon(sigma, q, steps, delta, accountant=RDPAccountant):
    acct = accountant()
    acct.history = [(sigma, q, steps)]
    return acct.get_epsilon(delta=delta)


def test_epsilon_for_a_known_plan_matches_opacus(capsys):
    out = run_json(
        capsys,
        "--sample-rate",
        "0.04",
        "--noise-multiplier",
        "1.5",
        "--steps",
        "2250",
        "--delta",
        "1e-5",
    )
    assert out["epsilon"] == pytest.approx(opacus_epsilon(1.5, 0.04, 2250, 1e-5))
    # Opacus's reference value (opacus/tests/accountants_test.py).
    assert out["epsilon"] == pytest.approx(7.32911117143, abs=1e-9)


def test_text_output_is_one_readable_line(capsys):
    assert (
        main(
            [
                "--sample-rate",
                "0.04",
                "--noise-multiplier",
                "1.5",
                "--steps",
                "2250",
                "--delta",
                "1e-5",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == (
        "ε = 7.3291 at δ = 1e-05 (rdp accountant; σ = 1.5, q = 0.04, 2250 steps)\n"
    )


def test_sigma_for_a_target_reproduces_the_target(capsys):
    out = run_json(
        capsys,
        "--target-epsilon",
        "3",
        "--sample-rate",
        "0.1",
        "--steps",
        "100",
        "--delta",
        "1e-5",
    )
    eps = opacus_epsilon(out["noise_multiplier"], 0.1, 100, 1e-5)
    assert 3 - 0.01 <= eps <= 3
    assert out["epsilon"] == pytest.approx(eps)


def test_schedule_gives_rate_steps_and_default_delta(capsys):
    # n = 150, batch 32: q = 32/150; 150/32 = 4.69 → 5 steps/epoch; 2 epochs, 3 rounds.
    out = run_json(
        capsys,
        "--num-examples",
        "150",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--rounds",
        "3",
        "--noise-multiplier",
        "1.1",
    )
    assert out["sample_rate"] == pytest.approx(32 / 150)
    assert out["steps"] == 30
    assert out["delta"] == 1e-4  # power of ten <= 1/(10·150)
    assert out["epsilon"] == pytest.approx(opacus_epsilon(1.1, 32 / 150, 30, 1e-4))


def test_prv_accountant(capsys):
    out = run_json(
        capsys,
        "--sample-rate",
        "0.2",
        "--noise-multiplier",
        "1.0",
        "--steps",
        "20",
        "--delta",
        "1e-4",
        "--accountant",
        "prv",
    )
    assert out["epsilon"] == pytest.approx(
        opacus_epsilon(1.0, 0.2, 20, 1e-4, PRVAccountant)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [
                "--num-examples",
                "150",
                "--batch-size",
                "32",
                "--noise-multiplier",
                "1",
                "--delta",
                "0.01",
            ],
            "δ = 0.01 is not below 1/n = 0.0067 for 150 examples",
        ),
        (
            [
                "--sample-rate",
                "1.5",
                "--steps",
                "10",
                "--delta",
                "1e-5",
                "--noise-multiplier",
                "1",
            ],
            r"--sample-rate must be in (0, 1], got 1.5",
        ),
        (
            [
                "--sample-rate",
                "0.1",
                "--steps",
                "0",
                "--delta",
                "1e-5",
                "--noise-multiplier",
                "1",
            ],
            "--steps must be >= 1, got 0",
        ),
        (
            ["--sample-rate", "0.1", "--steps", "10", "--noise-multiplier", "1"],
            "--delta is required with --sample-rate/--steps",
        ),
        (
            [
                "--sample-rate",
                "0.1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
                "--noise-multiplier",
                "-1",
            ],
            "--noise-multiplier must be >= 0, got -1.0",
        ),
        (
            [
                "--sample-rate",
                "0.1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
                "--target-epsilon",
                "0",
            ],
            "target ε must be > 0, got 0.0",
        ),
        (
            [
                "--sample-rate",
                "0.1",
                "--num-examples",
                "10",
                "--delta",
                "1e-5",
                "--noise-multiplier",
                "1",
            ],
            "either as --sample-rate/--steps or as",
        ),
        (
            ["--num-examples", "10", "--noise-multiplier", "1"],
            "--num-examples and --batch-size go together",
        ),
        (
            [
                "--num-examples",
                "10",
                "--batch-size",
                "2",
                "--epochs",
                "0",
                "--noise-multiplier",
                "1",
            ],
            "--epochs must be >= 1, got 0",
        ),
        (["--noise-multiplier", "1"], "describe the plan"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedge privacy: error: ")
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_goal_exits_2_with_one_line(capsys):
    assert main(["--sample-rate", "0.1", "--steps", "5", "--delta", "1e-5"]) == 2
    assert "give --noise-multiplier or --target-epsilon (or --config)" in (
        capsys.readouterr().err
    )


def test_a_run_config_gives_the_plan_a_node_would_run(tmp_path, capsys):
    from opacus.accountants.utils import get_noise_multiplier

    plan = tmp_path / "plan.toml"
    plan.write_text(
        "target-epsilon = 3.0\nnum-server-rounds = 5\nbatch-size = 40\nlocal-epochs = 2\n"
    )
    assert (
        main(["--config", str(plan), "--num-examples", "400", "--format", "json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    # q = 40/400; 10 steps per epoch, 2 epochs, 5 rounds; δ = 1e-4 <= 1/(10*400).
    assert result["sample_rate"] == pytest.approx(0.1)
    assert result["steps"] == 100
    assert result["delta"] == pytest.approx(1e-4)
    expected = get_noise_multiplier(
        target_epsilon=3.0,
        target_delta=1e-4,
        sample_rate=0.1,
        steps=100,
        accountant="rdp",
    )
    assert result["noise_multiplier"] == pytest.approx(expected)
    assert result["epsilon"] <= 3.0


def test_a_run_config_without_num_examples_is_refused(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text("target-epsilon = 3.0\n")
    assert main(["--config", str(plan)]) == 2
    assert "--config needs --num-examples" in capsys.readouterr().err


# ---------------------------------------------------------------- --suggest
def test_suggest_gives_the_rule_for_a_small_node(capsys):
    out = run_json(capsys, "--suggest", "--num-examples", "121", "--rounds", "10")

    # n = 121 <= 1024: the whole node is the batch (q = 1), 4 steps a round.
    assert (out["batch_size"], out["sample_rate"]) == (121, 1.0)
    assert (out["local_epochs"], out["steps_per_round"], out["steps"]) == (4, 4, 40)
    assert (out["learning_rate"], out["activation"]) == (0.5, "tanh")
    assert out["delta"] == 1e-4
    sigma = get_noise_multiplier(
        target_epsilon=8.0,
        target_delta=1e-4,
        sample_rate=1.0,
        steps=40,
        accountant="rdp",
    )
    assert out["noise_multiplier"] == pytest.approx(sigma, rel=1e-12)
    assert out["epsilon"] == pytest.approx(opacus_epsilon(sigma, 1.0, 40, 1e-4))
    assert out["epsilon"] <= 8.0
    assert out["chosen_by_rule"] == [
        "activation",
        "local-epochs",
        "batch-size",
        "learning-rate",
    ]


def test_suggest_text_names_every_setting(capsys):
    assert main(["--suggest", "--num-examples", "121", "--rounds", "10"]) == 0

    text = capsys.readouterr().out
    assert text.startswith(
        "DP-SGD defaults for a node of 121 examples, 10 rounds, ε ≤ 8:\n"
        "  batch size      121 (sample rate q = 1)\n"
        "  local epochs    4 (4 steps a round, 40 in all)\n"
        "  learning rate   0.5 (max-grad-norm 1, momentum 0.9)\n"
        "  activation      tanh\n"
        "  σ               3.68"
    )
    assert text.endswith(
        "chosen by the rule: activation, local-epochs, batch-size, learning-rate\n"
    )


def test_suggest_keeps_what_the_user_gives(capsys):
    out = run_json(
        capsys,
        "--suggest",
        "--num-examples",
        "121",
        "--config",
        "dp-digits-10-clients",
    )

    # The scenario sets every setting itself: the rule chooses nothing.
    assert (out["batch_size"], out["local_epochs"]) == (64, 4)
    assert (out["learning_rate"], out["activation"]) == (0.1, "tanh")
    assert out["rounds"] == 15
    assert out["chosen_by_rule"] == []


def test_suggest_with_a_given_batch_size_chooses_the_rest(capsys):
    out = run_json(capsys, "--suggest", "--num-examples", "121", "--batch-size", "30")

    # round(121 / 30) = 4 steps an epoch: 1 epoch is the rule's 4 steps.
    assert (out["batch_size"], out["local_epochs"], out["steps_per_round"]) == (
        30,
        1,
        4,
    )
    assert "batch-size" not in out["chosen_by_rule"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--suggest"],
            "--suggest needs --num-examples: the training examples of one node.",
        ),
        (
            ["--suggest", "--num-examples", "100", "--sample-rate", "0.5"],
            "--suggest chooses the sample rate and steps itself; drop "
            "--sample-rate/--steps.",
        ),
        (
            ["--suggest", "--num-examples", "0"],
            "--num-examples must be >= 1 (the node's training examples), got 0.",
        ),
        (
            ["--suggest", "--num-examples", "100", "--batch-size", "0"],
            "Invalid run config: 'batch-size' must be >= 1 or 'auto', got 0.",
        ),
    ],
)
def test_suggest_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2

    err = capsys.readouterr().err
    assert err == f"fedge privacy: error: {message}\n"


def test_config_reads_a_scenario_file_with_its_simulation_keys(capsys):
    # The scenario also sets `clients`, a simulation key: left out of the plan.
    out = run_json(capsys, "--config", "dp-digits-10-clients", "--num-examples", "121")

    # Batch 64 of 121: q = 64/121, round(121/64) = 2 steps an epoch, 4 epochs,
    # 15 rounds.
    assert out["sample_rate"] == pytest.approx(64 / 121)
    assert out["steps"] == 2 * 4 * 15


def test_config_that_is_not_toml_exits_2_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("not toml at all\n")

    assert main(["--config", str(bad), "--num-examples", "100"]) == 2

    err = capsys.readouterr().err
    assert err.startswith(
        f"fedge privacy: error: scenario file {bad} is not valid TOML"
    )
