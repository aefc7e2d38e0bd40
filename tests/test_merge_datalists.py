"""scripts/merge_datalists.py: one datalist from several, with paths that MONAI's loader resolves to the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from scripts.merge_datalists import main


def _datalist(folder: Path, names: list[str], validation: list[str] = ()) -> Path:
    """A datalist in ``folder`` whose entries point at files that exist there (labels/ and cbct/)."""
    for sub in ("labels", "cbct"):
        (folder / sub).mkdir(parents=True, exist_ok=True)

    def entry(name: str, seed: int) -> dict:
        for sub in ("labels", "cbct"):
            (folder / sub / f"{name}.nii.gz").write_bytes(b"")
        return {"image": f"labels/{name}.nii.gz", "cbct": f"cbct/{name}.nii.gz", "lesion": "none", "seed": seed}

    content = {
        "training": [entry(name, seed) for seed, name in enumerate(names)],
        "validation": [entry(name, 100 + seed) for seed, name in enumerate(validation)],
        "test": [],
    }
    path = folder / "datalist.json"
    path.write_text(json.dumps(content))
    return path


def test_merged_paths_resolve_to_the_same_files(tmp_path):
    first = _datalist(tmp_path / "site_a", ["a0", "a1"], validation=["a2"])
    second = _datalist(tmp_path / "deep" / "site_b", ["b0"])
    output = tmp_path / "both" / "datalist.json"
    assert main([str(first), str(second), "--output", str(output)]) == 0

    merged = json.loads(output.read_text())
    assert [e["seed"] for e in merged["training"]] == [0, 1, 0]
    assert merged["training"][2]["image"] == "../deep/site_b/labels/b0.nii.gz"
    assert merged["training"][0]["lesion"] == "none"
    assert "test" not in merged
    resolved = load_decathlon_datalist(output, data_list_key="training", base_dir=output.parent)
    expected = [tmp_path / "site_a" / "labels" / "a0.nii.gz", tmp_path / "site_a" / "labels" / "a1.nii.gz"]
    expected.append(tmp_path / "deep" / "site_b" / "labels" / "b0.nii.gz")
    assert [Path(e["image"]).resolve() for e in resolved] == expected
    assert [Path(e["cbct"]).resolve().parent.name for e in resolved] == ["cbct"] * 3
    validation = load_decathlon_datalist(output, data_list_key="validation", base_dir=output.parent)
    assert [Path(e["image"]).name for e in validation] == ["a2.nii.gz"]


def test_test_list_is_merged_when_asked(tmp_path):
    first = _datalist(tmp_path / "a", ["a0"])
    output = tmp_path / "merged.json"
    assert main([str(first), "--output", str(output), "--keys", "training", "test"]) == 0
    merged = json.loads(output.read_text())
    assert sorted(merged) == ["merged_from", "test", "training"]


@pytest.mark.parametrize("problem", ["duplicate", "missing_input", "missing_key", "not_json"])
def test_bad_input_writes_nothing(tmp_path, capsys, problem):
    first = _datalist(tmp_path / "a", ["a0"])
    inputs = [first]
    if problem == "duplicate":
        inputs.append(first)
        expected = "labels/a0.nii.gz is also in"
    elif problem == "missing_input":
        inputs.append(tmp_path / "absent.json")
        expected = "absent.json: no such file"
    elif problem == "missing_key":
        broken = tmp_path / "b" / "datalist.json"
        broken.parent.mkdir()
        broken.write_text(json.dumps({"training": []}))
        inputs.append(broken)
        expected = "no 'validation' list"
    else:
        broken = tmp_path / "b.json"
        broken.write_text("{")
        inputs.append(broken)
        expected = "b.json: not a readable JSON datalist"
    output = tmp_path / "out" / "datalist.json"
    assert main([*map(str, inputs), "--output", str(output)]) == 2
    assert expected in capsys.readouterr().err
    assert not output.exists()


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys):
    first = _datalist(tmp_path / "a", ["a0"])
    output = tmp_path / "datalist.json"
    output.write_text("keep me")
    assert main([str(first), "--output", str(output)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_text() == "keep me"
    assert main([str(first), "--output", str(output), "--overwrite"]) == 0
    assert json.loads(output.read_text())["training"][0]["seed"] == 0
