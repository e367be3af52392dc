from __future__ import annotations

from pathlib import Path

from cli.app import main


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_good_file_is_summarised(tmp_path, capsys):
    path = _write(
        tmp_path / "node.csv", "age,city,label\n30,a,yes\n41,b,no\n27,a,yes\n"
    )
    assert main(["node", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 examples" in out
    assert "labels: no=1, yes=2" in out
    assert "ok: this node's data can join" in out


def test_a_bad_value_is_named_with_column_and_row(tmp_path, capsys):
    rows = "\n".join(f"{20 + i},a,{'yes' if i % 2 else 'no'}" for i in range(12))
    path = _write(tmp_path / "node.csv", "age,city,label\n" + rows + "\nabc,b,no\n")
    assert main(["node", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "non-numeric value 'abc' in numeric column 'age'" in err
    assert "data row 13" in err


def test_the_federation_preprocessing_catches_missing_columns(tmp_path, capsys):
    reference = _write(tmp_path / "eval.csv", "age,city,label\n30,a,yes\n41,b,no\n")
    node = _write(tmp_path / "node.csv", "age,label\n30,yes\n41,no\n")
    assert main(["node", "check", str(node), "--reference", str(reference)]) == 2
    assert "city" in capsys.readouterr().err


def test_an_unknown_label_is_refused_against_the_reference(tmp_path, capsys):
    reference = _write(tmp_path / "eval.csv", "age,city,label\n30,a,yes\n41,b,no\n")
    node = _write(tmp_path / "node.csv", "age,city,label\n30,a,maybe\n")
    assert main(["node", "check", str(node), "--reference", str(reference)]) == 2
    assert "maybe" in capsys.readouterr().err
