import pytest

from fedge.shared.fairness import fairness_summary


def test_summary_of_four_clients_matches_a_hand_computation():
    summary = fairness_summary([0.9, 0.5, 0.7, 1.0], threshold=0.8)

    # sorted: 0.5 0.7 0.9 1.0; the 10th percentile sits 0.1 * 3 = 0.3 of the
    # way from 0.5 to 0.7 (linear interpolation): 0.5 + 0.3 * 0.2 = 0.56.
    assert summary == pytest.approx(
        {
            "clients-evaluated": 4,
            "client-accuracy-mean": (0.9 + 0.5 + 0.7 + 1.0) / 4,
            "client-accuracy-worst": 0.5,
            "client-accuracy-p10": 0.56,
            "client-accuracy-spread": 0.5,
            "client-share-below-threshold": 0.5,  # 0.5 and 0.7
        }
    )


def test_a_client_exactly_at_the_threshold_is_not_below_it():
    summary = fairness_summary([0.8, 0.8], threshold=0.8)

    assert summary["client-share-below-threshold"] == 0.0
    assert summary["client-accuracy-spread"] == 0.0


def test_no_client_evaluated_gives_no_summary():
    assert fairness_summary([], threshold=0.8) == {}
