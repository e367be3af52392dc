import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from shared.cli_privacy import main


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


def test_missing_goal_is_an_argparse_error_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--sample-rate", "0.1", "--steps", "5", "--delta", "1e-5"])
    assert exc.value.code == 2
    assert "one of the arguments --noise-multiplier --target-epsilon is required" in (
        capsys.readouterr().err
    )
