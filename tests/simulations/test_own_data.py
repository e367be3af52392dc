"""Simulating on the user's own files: splits, hold-out, layout and refusals.

Nothing here starts Flower (end-to-end runs: tests/integration/test_own_data_runs.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedge.simulations.simulate as simulate_module
from fedge.client.node_data import node_data_file
from fedge.shared.config import from_run_config
from fedge.shared.datasets import read_table
from fedge.shared.errors import ConfigError, DataError
from fedge.simulations.own_data import (
    OwnData,
    plan_own_data,
    run_config_keys,
    write_own_data,
)


def config(**overrides):
    return from_run_config(overrides, fill_defaults=True)


def clinics(n_per_site=(20, 10, 30), seed=0):
    """Rows with a unique id-like feature, a site column and a label a/b.

    Labels alternate a, b within each site, so every site and the whole file
    hold as many a as b.
    """
    rng = np.random.default_rng(seed)
    frames = []
    start = 0
    for site, n in zip(("north", "east", "south"), n_per_site, strict=True):
        frames.append(
            pd.DataFrame(
                {
                    "rowid": np.arange(start, start + n, dtype=float),
                    "x": rng.normal(size=n),
                    "site": site,
                    "y": np.where(np.arange(n) % 2 == 0, "a", "b"),
                }
            )
        )
        start += n
    return pd.concat(frames, ignore_index=True)


def write_csv(path, frame):
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- one file
def test_partition_by_makes_one_client_per_value_without_the_column(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics())

    plan = plan_own_data(
        OwnData(data=str(path), partition_by="site"),
        config(**{"label-column": "y"}),
        num_clients=None,
    )

    # Sorted values: east, north, south; 20 % of each class held out overall.
    assert plan.num_clients == 3
    assert plan.node_sources == ["site=east", "site=north", "site=south"]
    assert all("site" not in f.columns for f in plan.node_frames)
    assert "site" not in plan.holdout.columns
    assert len(plan.holdout) == 12  # 30 a and 30 b: 6 of each
    assert plan.holdout["y"].value_counts().to_dict() == {"a": 6, "b": 6}
    assert sum(len(f) for f in plan.node_frames) == 48
    east_ids = set(plan.node_frames[0]["rowid"])
    assert east_ids <= set(range(20, 30))


def test_central_test_rows_never_reach_a_client_and_counts_match_the_files(
    tmp_path,
):
    path = write_csv(tmp_path / "all.csv", clinics())
    run_dir = tmp_path / "run"
    plan = plan_own_data(
        OwnData(data=str(path), partition_by="site"),
        config(**{"label-column": "y"}),
        num_clients=None,
    )

    write_own_data(plan, run_dir)

    keys = run_config_keys(plan, run_dir)
    held = set(read_table(keys["eval-data-path"])["rowid"])
    seen: set[float] = set()
    for i, row in plan.partitions.iterrows():
        node = read_table(node_data_file(keys["node-data-dir"], i))
        assert len(node) == row["num-examples"]
        assert (node["y"] == "a").sum() == row["label-0"]
        seen |= set(node["rowid"])
    assert held.isdisjoint(seen)
    assert held | seen == set(range(60))  # every row is somewhere, once


def test_without_a_column_the_partitioner_splits_the_non_held_out_rows(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics().drop(columns="site"))

    plan = plan_own_data(
        OwnData(data=str(path)), config(**{"label-column": "y"}), num_clients=4
    )

    # 60 rows, 12 held out, 48 left: iid gives 12 each.
    assert [len(f) for f in plan.node_frames] == [12, 12, 12, 12]
    assert list(plan.partitions["num-examples"]) == [12, 12, 12, 12]


def test_with_eval_data_every_row_goes_to_the_clients(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics())
    held = write_csv(tmp_path / "held.csv", clinics((4, 4, 4)).drop(columns="site"))

    plan = plan_own_data(
        OwnData(data=str(path), partition_by="site"),
        config(**{"label-column": "y", "eval-data-path": str(held)}),
        num_clients=None,
    )

    assert [len(f) for f in plan.node_frames] == [10, 20, 30]
    assert plan.holdout is None
    assert run_config_keys(plan, tmp_path)["eval-data-path"] == str(held)


# (n, C, H, W) images and (n, channels, steps) time series.
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 5)])
def test_npz_images_and_series_are_written_back_as_npz_of_the_same_shape(
    tmp_path, shape
):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(40, *shape)).astype(np.float32)
    y = np.arange(40) % 2
    np.savez(tmp_path / "all.npz", x=x, y=y)
    plan = plan_own_data(
        OwnData(data=str(tmp_path / "all.npz")), config(), num_clients=2
    )

    write_own_data(plan, tmp_path / "run")

    node = np.load(tmp_path / "run" / "data" / "node-0.npz")
    assert node["x"].shape[1:] == shape
    assert len(node["x"]) == plan.partitions["num-examples"][0] == 16
    held = np.load(tmp_path / "run" / "data" / "central-test.npz")
    assert len(held["y"]) == 8  # 20 % of 20 per class


# ---------------------------------------------------------------- one file per node
def test_node_data_folder_gives_one_client_per_file_linked_as_is(tmp_path):
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    frame = clinics().drop(columns="site")
    write_csv(nodes / "a.csv", frame.iloc[:25])
    frame.iloc[25:].to_parquet(nodes / "b.parquet", index=False)
    (nodes / "README.txt").write_text("not data")
    held = write_csv(nodes / "held.csv", clinics((4, 4, 4)).drop(columns="site"))

    plan = plan_own_data(
        OwnData(node_data=str(nodes)),
        config(**{"label-column": "y", "eval-data-path": str(held)}),
        num_clients=None,
    )
    write_own_data(plan, tmp_path / "run")
    write_own_data(plan, tmp_path / "run")  # as a resumed run does

    assert plan.node_sources == [str(nodes / "a.csv"), str(nodes / "b.parquet")]
    assert list(plan.partitions["num-examples"]) == [25, 35]
    link = tmp_path / "run" / "data" / "node-1.parquet"
    assert link.resolve() == (nodes / "b.parquet").resolve()


def test_node_data_glob(tmp_path):
    frame = clinics().drop(columns="site")
    for i in range(3):
        write_csv(tmp_path / f"site-{i}.csv", frame.iloc[i * 20 : (i + 1) * 20])
    held = write_csv(tmp_path / "held.csv", frame.iloc[:10])

    plan = plan_own_data(
        OwnData(node_data=str(tmp_path / "site-*.csv")),
        config(**{"label-column": "y", "eval-data-path": str(held)}),
        num_clients=3,
    )

    assert plan.num_clients == 3


# ---------------------------------------------------------------- refusals
def refuse(tmp_path, source, match, *, error=DataError, num_clients=None, **keys):
    with pytest.raises(error, match=match):
        plan_own_data(
            source, config(**{"label-column": "y", **keys}), num_clients=num_clients
        )


def test_a_missing_label_column_names_the_file(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics().rename(columns={"y": "z"}))

    refuse(
        tmp_path, OwnData(data=str(path)), r"label column 'y' not found in .*all\.csv"
    )


def test_a_non_numeric_cell_names_file_column_and_row(tmp_path):
    frame = clinics().astype({"x": object})
    frame.loc[41, "x"] = "n/a?"
    path = write_csv(tmp_path / "all.csv", frame)

    refuse(
        tmp_path,
        OwnData(data=str(path), partition_by="site"),
        r"non-numeric value 'n/a\?' in numeric column 'x' \(file .*all\.csv, "
        r"data row 42",
    )


def test_a_missing_value_names_file_column_and_row(tmp_path):
    frame = clinics()
    frame.loc[7, "x"] = np.nan
    path = write_csv(tmp_path / "all.csv", frame)

    refuse(
        tmp_path,
        OwnData(data=str(path)),
        r"missing value in column 'x' \(file .*all\.csv, data row 8",
    )


def test_a_label_the_eval_file_lacks_names_the_row(tmp_path):
    frame = clinics()
    frame.loc[12, "y"] = "c"
    path = write_csv(tmp_path / "all.csv", frame)
    held = write_csv(tmp_path / "held.csv", clinics((4, 4, 4)))

    refuse(
        tmp_path,
        OwnData(data=str(path)),
        r"unknown label 'c' in column 'y' \(file .*all\.csv, data row 13",
        **{"eval-data-path": str(held)},
    )


def test_an_unknown_label_in_a_node_file_names_that_file(tmp_path):
    frame = clinics().drop(columns="site")
    frame.loc[3, "y"] = "c"
    write_csv(tmp_path / "n0.csv", frame.iloc[:30])
    write_csv(tmp_path / "n1.csv", frame.iloc[30:])
    held = write_csv(tmp_path / "held.csv", frame.iloc[30:40])

    refuse(
        tmp_path,
        OwnData(node_data=str(tmp_path / "n*.csv")),
        r"unknown label 'c' in column 'y' \(file .*n0\.csv, data row 4",
        **{"eval-data-path": str(held)},
    )


def test_a_missing_partition_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics())

    refuse(
        tmp_path,
        OwnData(data=str(path), partition_by="hospital"),
        r"partition column 'hospital' not found in .*all\.csv; columns found: "
        r"\['rowid', 'x', 'site', 'y'\]",
    )


def test_a_row_without_a_partition_value_is_refused(tmp_path):
    frame = clinics()
    frame.loc[5, "site"] = np.nan
    path = write_csv(tmp_path / "all.csv", frame)

    refuse(
        tmp_path,
        OwnData(data=str(path), partition_by="site"),
        r"missing value in partition column 'site' \(file .*all\.csv, data row 6",
    )


def test_a_client_count_the_column_contradicts_is_refused(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics())

    refuse(
        tmp_path,
        OwnData(data=str(path), partition_by="site"),
        r"--partition-by site makes 3 clients \(one per value: east, north, "
        r"south\), but the client count is set to 10; drop --clients",
        error=ConfigError,
        num_clients=10,
    )


def test_a_client_count_the_files_contradict_is_refused(tmp_path):
    write_csv(tmp_path / "n0.csv", clinics())
    held = write_csv(tmp_path / "held.csv", clinics())

    refuse(
        tmp_path,
        OwnData(node_data=str(tmp_path / "n*.csv")),
        r"--node-data .*n\*\.csv holds 1 files \(one per client\), but the client "
        r"count is set to 2",
        error=ConfigError,
        num_clients=2,
        **{"eval-data-path": str(held)},
    )


def test_node_data_needs_eval_data(tmp_path):
    refuse(
        tmp_path,
        OwnData(node_data=str(tmp_path)),
        r"--node-data .* needs --eval-data FILE: the coordinator's held-out file",
        error=ConfigError,
    )


def test_a_node_data_folder_without_data_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    held = write_csv(tmp_path / "held.csv", clinics())

    refuse(
        tmp_path,
        OwnData(node_data=str(tmp_path)),
        r"--node-data .* names no data files \(expected one .csv/.parquet/.npz "
        r"file per client; found \['held.csv', 'notes.txt'\]\)",
        **{"eval-data-path": str(held)},
    )


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (
            OwnData(data="a.csv", node_data="d"),
            r"--data and --node-data both given",
        ),
        (
            OwnData(node_data="d", partition_by="site"),
            r"--partition-by site splits the --data file; give --data FILE",
        ),
    ],
)
def test_conflicting_sources_are_refused(tmp_path, source, match):
    refuse(tmp_path, source, match, error=ConfigError)


def test_partition_by_on_an_npz_is_refused(tmp_path):
    np.savez(tmp_path / "all.npz", x=np.zeros((10, 2)), y=np.arange(10) % 2)

    refuse(
        tmp_path,
        OwnData(data=str(tmp_path / "all.npz"), partition_by="x0"),
        r"--partition-by x0: .*all\.npz is an .npz file, whose columns are unnamed",
        error=ConfigError,
    )


def test_a_group_too_small_for_a_client_is_refused(tmp_path):
    frame = clinics()
    frame.loc[0, "site"] = "tiny"
    path = write_csv(tmp_path / "all.csv", frame)
    held = write_csv(tmp_path / "held.csv", clinics((4, 4, 4)).drop(columns="site"))

    refuse(
        tmp_path,
        OwnData(data=str(path), partition_by="site"),
        r"1 client\(s\) would hold fewer than 2 examples \(one to train, one to "
        r"test\): site=tiny: 1; use fewer clients",
        **{"eval-data-path": str(held)},
    )


# ---------------------------------------------------------------- simulate()
def test_a_bad_file_is_refused_before_any_folder_or_process(tmp_path, no_flower):
    frame = clinics()
    frame.loc[7, "x"] = np.nan
    path = write_csv(tmp_path / "all.csv", frame)

    with pytest.raises(DataError, match=r"missing value in column 'x'"):
        simulate_module.simulate(
            {"label-column": "y"},
            output_dir=tmp_path / "runs",
            run_name="r",
            own_data=OwnData(data=str(path)),
            echo=lambda *_: None,
        )
    assert not (tmp_path / "runs").exists()


def test_dataset_file_without_node_files_is_refused(tmp_path, no_flower):
    with pytest.raises(
        ConfigError,
        match=r"dataset = 'file' in a simulation needs the virtual nodes' data: "
        r"give --data FILE",
    ):
        simulate_module.simulate(
            {"dataset": "file", "eval-data-path": "x.csv"},
            output_dir=tmp_path,
            echo=lambda *_: None,
        )


def test_own_data_with_a_builtin_dataset_is_refused(tmp_path, no_flower):
    with pytest.raises(
        ConfigError,
        match=r"--data/--node-data train on your files, but dataset = 'digits'",
    ):
        simulate_module.simulate(
            {"dataset": "digits"},
            output_dir=tmp_path,
            own_data=OwnData(data="x.csv"),
            echo=lambda *_: None,
        )


def test_an_eval_file_with_the_partition_column_is_used_without_it(tmp_path):
    path = write_csv(tmp_path / "all.csv", clinics())
    held = write_csv(tmp_path / "held.csv", clinics((4, 4, 4), seed=1))

    plan = plan_own_data(
        OwnData(data=str(path), partition_by="site"),
        config(**{"label-column": "y", "eval-data-path": str(held)}),
        num_clients=None,
    )
    write_own_data(plan, tmp_path / "run")

    # Every row of all.csv goes to a client; the run's copy of held.csv has 12
    # rows and no site column.
    assert [len(f) for f in plan.node_frames] == [10, 20, 30]
    keys = run_config_keys(plan, tmp_path / "run")
    central = read_table(keys["eval-data-path"])
    assert keys["eval-data-path"] == str(tmp_path / "run" / "data" / "central-test.csv")
    assert len(central) == 12
    assert "site" not in central.columns
