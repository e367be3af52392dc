from fedge.shared.flower_config_text import format_node_config


def test_node_config_is_formatted_as_flower_expects() -> None:
    text = format_node_config({"data-path": "/data/a b.csv", "partition-id": 0})
    assert text == 'data-path="/data/a b.csv" partition-id=0'


def test_booleans_and_floats_are_toml_values() -> None:
    text = format_node_config({"resume": True, "target-epsilon": 3.5})
    assert text == "resume=true target-epsilon=3.5"
