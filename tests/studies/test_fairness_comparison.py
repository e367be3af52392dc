"""The FedAvg vs q-FedAvg comparison's table (no simulation runs here)."""

from fedge.studies import fairness_comparison as fc


def test_table_gives_each_strategys_runs_mean_and_range():
    def figures(central, mean, worst, p10):
        return {
            fc.CENTRAL_ACCURACY: central,
            fc.CLIENT_ACCURACY_MEAN: mean,
            fc.CLIENT_ACCURACY_WORST: worst,
            fc.CLIENT_ACCURACY_P10: p10,
        }

    table = fc.build_table(
        {
            "fedavg": [figures(0.7, 0.6, 0.0, 0.2), figures(0.9, 0.8, 0.4, 0.4)],
            "qfedavg": [figures(0.75, 0.7, 0.5, 0.55)],
        },
        "num-server-rounds = 10",
    )

    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| strategy | runs | central accuracy | client mean | worst client "
        "| 10th percentile |"
    )
    assert rows[1] == (
        "| fedavg | 2 | 0.800 (0.700–0.900) | 0.700 (0.600–0.800) "
        "| 0.200 (0.000–0.400) | 0.300 (0.200–0.400) |"
    )
    assert rows[2] == "| qfedavg | 1 | 0.750 | 0.700 | 0.500 | 0.550 |"
    assert "(num-server-rounds = 10)" in table
