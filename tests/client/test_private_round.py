"""A node's DP round as the ClientApp runs it: plan, ledger, budget, restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedge.client.node_data import load_node_data
from fedge.client.privacy_ledger import LedgerError
from fedge.client.private_round import train_private_round
from fedge.shared import keys
from fedge.shared.config import default_run_config, from_run_config
from fedge.shared.datasets import load_builtin
from fedge.shared.models import build_model, default_spec
from fedge.shared.privacy_history import Release, ReleaseHistory
from fedge.shared.privacy_plan import plan_for_config

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _setup(tmp_path: Path, **overrides):
    run_config = {
        **default_run_config(),
        "dp-mode": "sample",
        "noise-multiplier": 1.1,
        "target-epsilon": 50.0,
        "target-delta": 1e-4,
        "local-epochs": 1,
        "batch-size": 32,
        **overrides,
    }
    config = from_run_config(run_config)
    node_config = {
        "partition-id": 0,
        "num-partitions": 3,
        "state-dir": str(tmp_path / "state"),
    }
    reference = load_builtin("digits", "test")
    data = load_node_data(node_config, config.data, reference.preprocessing)
    spec = default_spec("cnn", reference.preprocessing.input_shape, 10)
    return config, run_config, node_config, data, spec


def _fresh_context(run_config, node_config) -> Context:
    """What a restarted node process has: its config, and no state at all."""
    return Context(
        run_id=1,
        node_id=7,
        node_config=dict(node_config),
        state=RecordDict(),
        run_config=run_config,
    )


def _train_in_a_fresh_process(
    config, run_config, node_config, data, spec, server_round, run_id, model_seed=0
):
    return train_private_round(
        build_model(spec, model_seed=model_seed),
        data.train,
        config=config,
        context=_fresh_context(run_config, node_config),
        server_round=server_round,
        fedge_run_id=run_id,
    )


def _budget_for(run_config, q, steps, *, releases):
    """The config with a budget between ε of ``releases`` rounds and one more."""
    budget = (
        _expected_epsilon(q, 1.1, releases * steps, 1e-4)
        + _expected_epsilon(q, 1.1, (releases + 1) * steps, 1e-4)
    ) / 2
    return from_run_config({**run_config, "target-epsilon": budget})


def _expected_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    return get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0]


def test_a_restarted_node_continues_its_ledger(tmp_path: Path) -> None:
    config, run_config, node_config, data, spec = _setup(tmp_path)
    n = len(data.train)
    q, steps_per_round = 32 / n, round(n / 32)
    epsilons = []
    for server_round in (1, 2, 3):
        # A new process each round, as flower-supernode runs a ClientApp: only the
        # state directory carries the ledger over.
        figures = train_private_round(
            build_model(spec),
            data.train,
            config=config,
            context=_fresh_context(run_config, node_config),
            server_round=server_round,
            fedge_run_id="run-a",
        )
        assert figures[keys.REFUSED] == 0
        epsilons.append(figures[keys.EPSILON])
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]
    for k, epsilon in enumerate(epsilons, start=1):
        assert epsilon == pytest.approx(
            _expected_epsilon(q, 1.1, k * steps_per_round, 1e-4), rel=1e-6
        )


def test_a_round_past_the_budget_is_refused_without_training(tmp_path: Path) -> None:
    n_rounds_allowed = 2
    config, run_config, node_config, data, spec = _setup(tmp_path)
    n = len(data.train)
    q, steps = 32 / n, round(n / 32)
    config = _budget_for(run_config, q, steps, releases=2)
    for server_round in range(1, n_rounds_allowed + 1):
        figures = _train_in_a_fresh_process(
            config, run_config, node_config, data, spec, server_round, "run-b"
        )
        assert figures[keys.REFUSED] == 0
    model = build_model(spec, model_seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    figures = train_private_round(
        model,
        data.train,
        config=config,
        context=_fresh_context(run_config, node_config),
        server_round=3,
        fedge_run_id="run-b",
    )
    assert figures[keys.REFUSED] == 1
    assert figures[keys.EPSILON] == pytest.approx(
        _expected_epsilon(q, 1.1, 2 * steps, 1e-4), rel=1e-6
    )
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())


def test_a_round_asked_again_with_other_parameters_is_trained_again_and_counted(
    tmp_path: Path,
) -> None:
    # Round 2 asked for again, but with another global model than the first
    # time (the cached update would be the wrong answer): a second release,
    # and both count. The budget allows exactly three releases, so round 3 (a
    # fourth) is refused.
    _, run_config, node_config, data, spec = _setup(tmp_path)
    n = len(data.train)
    q, steps = 32 / n, round(n / 32)
    config = _budget_for(run_config, q, steps, releases=3)
    replies = [
        _train_in_a_fresh_process(
            config, run_config, node_config, data, spec, server_round, "run-again", seed
        )
        for server_round, seed in ((1, 0), (2, 0), (2, 1), (3, 1))
    ]
    assert [r[keys.REFUSED] for r in replies] == [0, 0, 0, 1]
    for releases, reply in zip((1, 2, 3, 3), replies, strict=True):
        assert reply[keys.DP_STEPS] == releases * steps
        assert reply[keys.EPSILON] == pytest.approx(
            _expected_epsilon(q, 1.1, releases * steps, 1e-4), rel=1e-6
        )
    ledger_file = next((tmp_path / "state").glob("privacy-ledger-*.json"))
    document = json.loads(ledger_file.read_text())
    assert document["server-rounds"] == [1, 2, 2]
    # Each entry is exactly the plan the budget check approved.
    plan = plan_for_config(config=config, num_examples=n)
    assert plan.round_entry == (1.1, q, steps)
    entries = zip(
        document["noise-multipliers"],
        document["sample-rates"],
        document["steps"],
        strict=True,
    )
    assert list(entries) == [plan.round_entry] * 3


def test_a_wiped_state_dir_continues_from_the_coordinators_record(
    tmp_path: Path,
) -> None:
    config, run_config, node_config, data, spec = _setup(tmp_path)
    n = len(data.train)
    q, steps = 32 / n, round(n / 32)
    for server_round in (1, 2):
        _train_in_a_fresh_process(
            config, run_config, node_config, data, spec, server_round, "run-w"
        )
    shutil.rmtree(tmp_path / "state")  # the node's disk is wiped
    # The coordinator sends what it received: rounds 1 and 2.
    record = ReleaseHistory(tuple(Release(r, 1.1, q, steps) for r in (1, 2)))
    figures = train_private_round(
        build_model(spec),
        data.train,
        config=config,
        context=_fresh_context(run_config, node_config),
        server_round=3,
        fedge_run_id="run-w",
        coordinator_record=record,
    )
    assert figures[keys.REFUSED] == 0
    assert figures[keys.DP_STEPS] == 3 * steps
    assert figures[keys.EPSILON] == pytest.approx(
        _expected_epsilon(q, 1.1, 3 * steps, 1e-4), rel=1e-6
    )
    ledger_file = next((tmp_path / "state").glob("privacy-ledger-*.json"))
    assert json.loads(ledger_file.read_text())["server-rounds"] == [1, 2, 3]


def test_a_corrupt_ledger_is_refused_not_reset(tmp_path: Path) -> None:
    config, run_config, node_config, data, spec = _setup(tmp_path)
    train_private_round(
        build_model(spec),
        data.train,
        config=config,
        context=_fresh_context(run_config, node_config),
        server_round=1,
        fedge_run_id="run-c",
    )
    ledger_file = next((tmp_path / "state").glob("privacy-ledger-*.json"))
    document = json.loads(ledger_file.read_text())
    document["entries"] = []  # someone "resets" the spend by hand
    ledger_file.write_text(json.dumps(document))
    with pytest.raises(LedgerError, match="checksum"):
        train_private_round(
            build_model(spec),
            data.train,
            config=config,
            context=_fresh_context(run_config, node_config),
            server_round=2,
            fedge_run_id="run-c",
        )


def test_later_messages_need_neither_accountant_nor_validation(
    tmp_path: Path, monkeypatch
) -> None:
    # Deployment: each message is a fresh process; only context.state and the
    # state-dir survive. After the first message, the plan (σ calibrated for the
    # run, ε schedule) and the validated spec come from context.state.
    config, run_config, node_config, data, spec = _setup(
        tmp_path, **{"noise-multiplier": 0.0, "target-epsilon": 8.0}
    )
    state = RecordDict()

    def context() -> Context:
        return Context(
            run_id=1,
            node_id=7,
            node_config=dict(node_config),
            state=state,
            run_config=run_config,
        )

    first = train_private_round(
        build_model(spec),
        data.train,
        config=config,
        context=context(),
        server_round=1,
        fedge_run_id="run-d",
        model_spec=spec.to_json(),
    )

    def forbidden(*_, **__):
        raise AssertionError("recomputed what context.state holds")

    monkeypatch.setattr("fedge.client.private_round._validated_specs", set())
    for name in (
        "validate_private_model",
        "plan_for_config",
        "epsilon_schedule",
    ):
        monkeypatch.setattr(f"client.private_round.{name}", forbidden)
    monkeypatch.setattr("fedge.client.budget.epsilon_for", forbidden)
    second = train_private_round(
        build_model(spec),
        data.train,
        config=config,
        context=context(),
        server_round=2,
        fedge_run_id="run-d",
        model_spec=spec.to_json(),
    )

    n = len(data.train)
    q, steps = 32 / n, round(n / 32)
    sigma = first[keys.NOISE_MULTIPLIER]
    assert second[keys.NOISE_MULTIPLIER] == sigma
    for k, figures in enumerate((first, second), start=1):
        assert figures[keys.REFUSED] == 0
        assert figures[keys.EPSILON] == pytest.approx(
            _expected_epsilon(q, sigma, k * steps, 1e-4), rel=1e-9
        )


@pytest.mark.slow  # PRV evaluations take a fraction of a second each
def test_prv_accounts_once_per_round_and_reports_opacus_epsilon(
    tmp_path: Path, monkeypatch
) -> None:
    from opacus.accountants import PRVAccountant

    import fedge.client.budget

    config, run_config, node_config, data, spec = _setup(
        tmp_path, accountant="prv", **{"num-server-rounds": 3}
    )
    calls = []
    exact = fedge.client.budget.epsilon_for

    def counting(**kwargs):
        calls.append(kwargs["history"])
        return exact(**kwargs)

    monkeypatch.setattr(fedge.client.budget, "epsilon_for", counting)
    state = RecordDict()
    n = len(data.train)
    q, steps = 32 / n, round(n / 32)
    for server_round in (1, 2, 3):
        figures = train_private_round(
            build_model(spec),
            data.train,
            config=config,
            context=Context(
                run_id=1,
                node_id=7,
                node_config=dict(node_config),
                state=state,
                run_config=run_config,
            ),
            server_round=server_round,
            fedge_run_id="run-prv",
            model_spec=spec.to_json(),
        )
        assert len(calls) == server_round  # ε after this round only
        reference = PRVAccountant()
        reference.history = [(1.1, q, server_round * steps)]
        assert figures[keys.EPSILON] == pytest.approx(
            reference.get_epsilon(delta=1e-4), rel=1e-9
        )
