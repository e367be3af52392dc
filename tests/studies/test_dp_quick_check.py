"""The in-process DP check learns under a node's plan and is reproducible."""

from fedge.studies.dp_quick_check import quick_check


def test_a_generous_budget_learns_the_digits_and_a_rerun_is_identical():
    settings = {"clients": 2, "rounds": 2, "epsilon": 50.0, "local_epochs": 2}

    first = quick_check(**settings)
    again = quick_check(**settings)

    assert first == again  # seeded noise, seeded views
    assert first["accuracy"] > 0.5  # chance is 0.1
    assert first["noise_multiplier"] > 0  # DP-SGD ran with noise


def test_views_change_what_is_learned_but_not_the_plan():
    settings = {"clients": 2, "rounds": 1, "epsilon": 8.0, "local_epochs": 1}

    plain = quick_check(**settings)
    views = quick_check(**settings, augment_multiplicity=2)

    assert views["noise_multiplier"] == plain["noise_multiplier"]
    assert views["sample_rate"] == plain["sample_rate"]
    assert views["accuracy"] != plain["accuracy"]
