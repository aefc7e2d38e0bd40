"""scripts/prepare_dataset.py on folders of good and bad label maps made here with nibabel and ITK."""

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, LoadImage

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_dataset.py"
AFFINE = np.diag([-0.5, -0.5, 0.5, 1.0])

spec = importlib.util.spec_from_file_location("prepare_dataset", SCRIPT)
prepare_dataset = importlib.util.module_from_spec(spec)
sys.modules["prepare_dataset"] = prepare_dataset  # worker processes find the functions they run by module name
spec.loader.exec_module(prepare_dataset)

needs_fork = pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork", reason="in-process calls rely on forked worker processes"
)


def jaw(shape=(12, 10, 8), dtype=np.int16) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    labels[2:10, 2:8, 0:4] = 2
    labels[2:10, 2:8, 4:8] = 1
    labels[4:6, 4:6, 3:5] = 4
    labels[6, 5, 2] = 5
    return labels


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def save_cbct(folder: Path, name: str, shape=(12, 10, 8), affine: np.ndarray = AFFINE) -> Path:
    return save(folder / name, np.full(shape, -1000, np.int16), affine)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def mixed(tmp_path):
    """Ten good label maps with CBCTs and one of each kind of bad file; returns (labels, cbcts, good, bad -> reason)."""
    labels, cbcts = tmp_path / "labels", tmp_path / "cbct"
    labels.mkdir(), cbcts.mkdir()
    good = []
    for index in range(10):
        good.append(save(labels / f"good_{index:02d}.nii.gz", jaw()))
        # DentalSegmentator ran on nnU-Net inputs named <case>_0000; plain <case> names pair as well
        save_cbct(cbcts, f"good_{index:02d}_0000.nii.gz" if index % 2 else f"good_{index:02d}.nii.gz")
    noisy = np.random.default_rng(0).integers(0, 6, (40, 40, 40), dtype=np.int16)  # barely compressible
    save(labels / "noisy.nii.gz", noisy)
    (labels / "corrupt.nii.gz").write_bytes((labels / "noisy.nii.gz").read_bytes()[:20000])
    (labels / "noisy.nii.gz").unlink()
    (labels / "notes.nii.gz").write_text("not an image\n")
    save(labels / "slice.nii.gz", jaw()[:, :, 3])
    save(labels / "series.nii.gz", np.stack([jaw(), jaw()], axis=-1))
    save(labels / "intensity.nii.gz", jaw(dtype=np.float32) * 0.37)
    outside = jaw()
    outside[outside == 4] = 31
    save(labels / "outside.nii.gz", outside)
    save(labels / "blank.nii.gz", np.zeros((12, 10, 8), np.int16))
    save(labels / "lonely.nii.gz", jaw())
    save(labels / "shifted.nii.gz", jaw())
    save(labels / "resized.nii.gz", jaw())
    shifted_affine = AFFINE.copy()
    shifted_affine[0, 3] = 4.0
    for name in ("corrupt", "notes", "slice", "series", "intensity", "outside", "blank"):
        save_cbct(cbcts, f"{name}.nii.gz")
    save_cbct(cbcts, "shifted.nii.gz", affine=shifted_affine)
    save_cbct(cbcts, "resized.nii.gz", shape=(12, 10, 9))
    (labels / "README.txt").write_text("ignored: not an image suffix\n")
    bad = {
        "corrupt.nii.gz": "cannot be read as an image",
        "notes.nii.gz": "cannot be read as an image",
        "slice.nii.gz": "expected a 3D label map, got an image of shape (12, 10)",
        "series.nii.gz": "expected a 3D label map, got an image of shape (12, 10, 8, 2)",
        "intensity.nii.gz": "non-integer values",
        "outside.nii.gz": "labels [31] are outside 0..5",
        "blank.nii.gz": "label map is empty (all voxels are 0)",
        "lonely.nii.gz": "no CBCT named lonely or lonely_0000",
        "shifted.nii.gz": "its CBCT shifted.nii.gz has a different affine (largest difference 4 mm",
        "resized.nii.gz": "its CBCT resized.nii.gz has shape (12, 10, 9), the label map (12, 10, 8)",
    }
    return labels, cbcts, good, bad


def test_mixed_folder_keeps_exactly_the_good_files_and_reports_every_bad_one(mixed, tmp_path):
    labels, cbcts, good, bad = mixed
    output = tmp_path / "lists" / "datalist.json"
    split = ["--fractions", "0.6", "0.2", "0.2", "--seed", "3", "--workers", "2"]
    result = run_script("--label_dir", str(labels), "--cbct_dir", str(cbcts), "--output", str(output), *split)
    assert result.returncode == 0, result.stderr
    datalist = json.loads(output.read_text())
    assert [datalist[key] for key in ("numTraining", "numValidation", "numTest")] == [6, 2, 2]
    entries = datalist["training"] + datalist["validation"] + datalist["test"]
    assert sorted(Path(entry["image"]).name for entry in entries) == sorted(path.name for path in good)
    assert all(Path(e["cbct"]).name.startswith(Path(e["image"]).name.removesuffix(".nii.gz")) for e in entries)
    reasons = {Path(entry["image"]).name: entry["reason"] for entry in datalist["rejected"]}
    assert sorted(reasons) == sorted(bad)
    for name, expected in bad.items():
        assert reasons[name].startswith(str(labels / name) + ": "), reasons[name]
        assert expected in reasons[name], reasons[name]
        assert f"rejected: {reasons[name]}" in result.stderr
    assert "10 accepted (training 6, validation 2, test 2), 10 rejected" in result.stdout
    assert [p.name for p in output.parent.iterdir()] == ["datalist.json"]  # no temporary file left behind


def test_datalist_paths_resolve_with_load_decathlon_datalist_and_feed_the_shared_preprocessing(mixed, tmp_path):
    labels, cbcts, good, _ = mixed
    output = tmp_path / "elsewhere" / "deeper" / "datalist.json"
    result = run_script("--label_dir", str(labels), "--cbct_dir", str(cbcts), "--output", str(output), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "[1/" not in result.stderr  # --quiet keeps the progress lines out
    loaded = []
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(output, is_segmentation=False, data_list_key=key, base_dir=output.parent)
        loaded += items
        assert all(Path(item["image"]).is_file() and Path(item["cbct"]).is_file() for item in items)
    assert sorted(Path(item["image"]) for item in loaded) == sorted(good)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    image = Compose(parser.get_parsed_content("preprocessing"))(loaded[0])["image"]
    assert image.shape[0] == 1 and np.allclose(np.diag(image.affine)[:3], 2.0)
    values = set(np.round(np.unique(image.numpy()).astype(np.float64), 4).tolist())
    assert values <= {0.0, 0.6, 0.7, 0.8, 0.9, 1.0} and max(values) > 0


def test_same_seed_gives_the_same_datalist_and_another_seed_a_different_split(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for index in range(12):
        save(labels / f"case_{index:02d}.nii", jaw())
    run = lambda name, seed: prepare_dataset.prepare(labels, tmp_path / name, seed=seed, workers=1)  # noqa: E731
    first, again, other = run("a.json", 7), run("b.json", 7), run("c.json", 8)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert first == again and "cbct" not in first["training"][0]
    assert first["training"] != other["training"]
    assert sorted(e["image"] for k in ("training", "validation", "test") for e in other[k]) == sorted(
        f"labels/case_{index:02d}.nii" for index in range(12)
    )
    assert [len(first[key]) for key in ("training", "validation", "test")] == [8, 1, 3]  # 8.4, 1.2, 2.4


def test_existing_output_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    save(labels / "case.nii.gz", jaw())
    output = tmp_path / "datalist.json"
    output.write_text("user data\n")
    refused = run_script("--label_dir", str(labels), "--output", str(output))
    assert refused.returncode == 2
    expected = f"prepare_dataset.py: {output}: exists; pass --overwrite to replace it"
    assert refused.stderr.strip().splitlines() == [expected]
    assert output.read_text() == "user data\n"
    arguments = ["--label_dir", str(labels), "--output", str(output), "--overwrite", "--fractions", "1", "0", "0"]
    replaced = run_script(*arguments)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(output.read_text())["training"] == [{"image": "labels/case.nii.gz"}]


def test_nothing_valid_exits_2_and_writes_nothing(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    save(labels / "blank.nii.gz", np.zeros((4, 4, 4), np.uint8))
    (labels / "notes.nii").write_text("text")
    output = tmp_path / "out" / "datalist.json"
    result = run_script("--label_dir", str(labels), "--output", str(output))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"prepare_dataset.py: {labels}: none of the 2 label maps is valid (reasons above); nothing written"
    assert f"rejected: {labels / 'blank.nii.gz'}: label map is empty" in result.stderr
    assert not (tmp_path / "out").exists()


@needs_fork
@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--label_dir", "{tmp}/missing"], "{tmp}/missing: --label_dir folder not found"),
        (["--label_dir", "{tmp}/labels", "--cbct_dir", "{tmp}/nope"], "{tmp}/nope: --cbct_dir folder not found"),
        (["--label_dir", "{tmp}/empty"], "{tmp}/empty: no label maps (.nii.gz, .nii, .nrrd, .mha) in this folder"),
        (["--label_dir", "{tmp}/labels", "--fractions", "0.5", "0.2", "0.2"], "need three non-negative fractions"),
        (["--label_dir", "{tmp}/labels", "--remap_preset", "toothfairy9"], "--remap_preset toothfairy9: unknown"),
        (["--label_dir", "{tmp}/labels", "--cbct_dir", "{tmp}/labels"], "--cbct_dir is the --label_dir folder"),
    ],
)
def test_invalid_invocations_exit_2_with_one_line(tmp_path, capsys, arguments, message):
    (tmp_path / "labels").mkdir(), (tmp_path / "empty").mkdir()
    save(tmp_path / "labels" / "case.nii.gz", jaw())
    output = tmp_path / "datalist.json"
    argv = [argument.format(tmp=tmp_path) for argument in arguments] + ["--output", str(output)]
    assert prepare_dataset.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], lines
    assert not output.exists()


@needs_fork
def test_toothfairy2_maps_need_the_remap_preset(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    toothfairy2 = np.zeros((12, 10, 8), np.int16)
    toothfairy2[2:10, 2:8, 1:4], toothfairy2[4, 4, 4], toothfairy2[5, 5, 2], toothfairy2[6, 5, 2] = 1, 11, 36, 3
    save(labels / "tf2.nii.gz", toothfairy2)
    with pytest.raises(ValueError, match="none of the 1 label maps is valid"):
        prepare_dataset.prepare(labels, tmp_path / "a.json", workers=1)
    assert not (tmp_path / "a.json").exists()
    datalist = prepare_dataset.prepare(
        labels, tmp_path / "b.json", fractions=(1, 0, 0), remap_preset="toothfairy2", workers=1
    )
    assert datalist["remap_preset"] == "toothfairy2" and datalist["training"] == [{"image": "labels/tf2.nii.gz"}]


def write_itk(path: Path, array_xyz: np.ndarray, spacing, origin, direction) -> Path:
    image = itk.image_from_array(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing(spacing), image.SetOrigin(origin)
    image.SetDirection(itk.matrix_from_array(np.asarray(direction, dtype=np.float64)))
    itk.imwrite(image, str(path), compression=True)
    return path


OBLIQUE = [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_header_geometry_matches_what_monai_loads(tmp_path, suffix):
    array = jaw()
    if suffix == ".nii.gz":
        affine = np.array([[0.0, -0.6, 0.0, -10.0], [0.5, 0.0, 0.0, 20.0], [0.0, 0.0, 0.7, 30.0], [0, 0, 0, 1]])
        path = save(tmp_path / f"case{suffix}", array, affine)
    else:
        path = write_itk(tmp_path / f"case{suffix}", array, [0.5, 0.6, 0.7], [10.0, -20.0, 30.0], OBLIQUE)
    shape, affine = prepare_dataset.header_geometry(path)
    loaded = LoadImage(image_only=True)(str(path))
    assert shape == tuple(loaded.shape) == array.shape
    np.testing.assert_allclose(affine, loaded.affine.numpy(), atol=1e-6)


@needs_fork
def test_cbct_pairs_across_formats_compare_in_physical_space(tmp_path):
    labels, cbcts = tmp_path / "labels", tmp_path / "cbct"
    labels.mkdir(), cbcts.mkdir()
    # the same geometry written as LPS (ITK) and as RAS (NIfTI): x and y flip sign between the two conventions
    ras_affine = np.array([[0.0, -0.6, 0.0, -10.0], [0.5, 0.0, 0.0, 20.0], [0.0, 0.0, 0.7, 30.0], [0, 0, 0, 1]])
    write_itk(labels / "itk_label.nrrd", jaw(), [0.5, 0.6, 0.7], [10.0, -20.0, 30.0], OBLIQUE)
    save(cbcts / "itk_label_0000.nii.gz", np.zeros((12, 10, 8), np.int16), ras_affine)
    save(labels / "nifti_label.nii.gz", jaw(), ras_affine)
    write_itk(cbcts / "nifti_label.mha", np.zeros((12, 10, 8), np.int16), [0.5, 0.6, 0.7], [10.0, -20.0, 30.0], OBLIQUE)
    save(labels / "mirrored.nii.gz", jaw(), ras_affine)  # LPS numbers stored as if RAS: 20 mm off
    save(cbcts / "mirrored.nii.gz", np.zeros((12, 10, 8), np.int16), np.diag([-1, -1, 1, 1]) @ ras_affine)
    save(labels / "twice.nii.gz", jaw())
    save_cbct(cbcts, "twice.nii.gz"), write_itk(cbcts / "twice_0000.nrrd", jaw(), [1, 1, 1], [0, 0, 0], np.eye(3))
    save(labels / "dup.nii", jaw()), save(labels / "dup.nii.gz", jaw())
    save_cbct(cbcts, "dup.nii.gz")
    datalist = prepare_dataset.prepare(labels, tmp_path / "datalist.json", cbct_dir=cbcts, fractions=(1, 0, 0))
    assert sorted(entry["image"] for entry in datalist["training"]) == [
        "labels/itk_label.nrrd",
        "labels/nifti_label.nii.gz",
    ]
    reasons = {Path(entry["image"]).name: entry["reason"] for entry in datalist["rejected"]}
    assert "its CBCT mirrored.nii.gz has a different affine (largest difference 40 mm" in reasons["mirrored.nii.gz"]
    assert f"several CBCTs match in {cbcts}: twice.nii.gz, twice_0000.nrrd" in reasons["twice.nii.gz"]
    assert "same stem as dup.nii.gz: keep one" in reasons["dup.nii"]
    assert "same stem as dup.nii: keep one" in reasons["dup.nii.gz"]


def _crash_on_marked_files(real_chain):
    def build(config_file, remap_preset):
        image_key, load, validate = real_chain(config_file, remap_preset)

        def load_or_crash(data):
            if "crash" in Path(data[image_key]).name:
                os._exit(139)  # as a reader hitting a segmentation fault would end the process
            return load(data)

        return image_key, load_or_crash, validate

    return build


@needs_fork
def test_a_file_that_crashes_its_reader_is_rejected_and_the_others_still_checked(tmp_path, monkeypatch):
    labels = tmp_path / "labels"
    labels.mkdir()
    names = ["a_good.nii.gz", "b_crash.nii.gz", "c_good.nii.gz", "d_blank.nii.gz", "e_good.nii.gz"]
    for name in names:
        save(labels / name, np.zeros((6, 6, 6), np.int16) if "blank" in name else jaw())
    crashing = _crash_on_marked_files(prepare_dataset.build_validation_chain)
    monkeypatch.setattr(prepare_dataset, "build_validation_chain", crashing)
    candidates = prepare_dataset.pair_with_cbcts(prepare_dataset.list_images(labels), None)
    problems = prepare_dataset.check_all(candidates, prepare_dataset.DEFAULT_CONFIG, None, 1e-3, workers=2)
    assert {path.name: bool(found) for path, found in problems.items()} == {
        "a_good.nii.gz": False,
        "b_crash.nii.gz": True,
        "c_good.nii.gz": False,
        "d_blank.nii.gz": True,
        "e_good.nii.gz": False,
    }
    assert problems[labels / "b_crash.nii.gz"] == ["the process reading it crashed"]
    assert problems[labels / "d_blank.nii.gz"] == ["label map is empty (all voxels are 0)"]


@pytest.mark.parametrize(
    "count, fractions, sizes",
    [(10, (0.6, 0.2, 0.2), [6, 2, 2]), (3, (0.5, 0.0, 0.5), [2, 0, 1]), (287, (0.756, 0.0, 0.244), [217, 0, 70])],
)
def test_split_sizes_examples(count, fractions, sizes):
    assert prepare_dataset.split_sizes(count, fractions) == sizes


@given(
    st.integers(min_value=0, max_value=500),
    st.lists(st.integers(min_value=0, max_value=20), min_size=3, max_size=3).filter(lambda weights: sum(weights) > 0),
)
def test_split_sizes_sum_to_the_count_and_stay_within_one_of_the_fraction(count, weights):
    fractions = [weight / sum(weights) for weight in weights]
    sizes = prepare_dataset.split_sizes(count, fractions)
    assert sum(sizes) == count
    assert all(abs(size - count * fraction) < 1 for size, fraction in zip(sizes, fractions))
