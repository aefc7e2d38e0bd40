"""Inference outputs under concurrency and kills: runs that share an output folder do not corrupt each other, a run
killed while writing leaves only complete case folders (and a hidden temporary folder, which no later run is
confused by), and two runs writing the same case at once leave one run's complete output, never a mix.

The command-line tests run ``python -m monai.bundle run`` as a user would; the in-process tests reproduce the exact
interleavings (a second writer finishing the same case while the first is still writing) that the command-line runs
only hit by chance.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

import bundle.outputs
import bundle.stl
from bundle.figures import SaveOverviewd
from bundle.outputs import WriteCaseFolderd, is_temporary, prepare_output_dir
from bundle.slicer_segmentation import SaveSlicerSegmentationd
from tests.conftest import CASES, SINGLE_THREAD_ENV, assert_same_case, inference_command

ROOT = Path(__file__).resolve().parents[1]
PARTIAL = re.compile(r"\.(?P<case>.+)\.[0-9a-f]{8}\.partial")


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _run_together(*commands: list[str], logs: Path) -> tuple[list[int], list[str]]:
    """Start ``commands`` at once and wait for all; their exit codes and stderr (kept in files under ``logs``, so
    that a full pipe never holds a run back while another one runs)."""
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"run{i}.stderr" for i in range(len(commands))]
    runs = []
    for command, path in zip(commands, paths):
        with open(path, "w") as stderr:
            runs.append(subprocess.Popen(command, env=SINGLE_THREAD_ENV, stdout=subprocess.DEVNULL, stderr=stderr))
    codes = [run.wait(timeout=600) for run in runs]
    return codes, [path.read_text() for path in paths]


# --- command line ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_runs_on_different_cases_into_one_folder(reference_outputs, inference_cases, tiny_weights, tmp_path):
    output = tmp_path / "shared"
    inputs = [str(inference_cases.parent / f"{case}.nii.gz") for case in CASES[:2]]
    codes, errors = _run_together(
        *(inference_command(tiny_weights, output, "--input", path, "--overwrite", "true") for path in inputs),
        logs=tmp_path / "logs",
    )
    assert codes == [0, 0], [e[-2000:] for e in errors]
    assert _visible(output) == list(CASES[:2]) and _hidden(output) == []
    for case in CASES[:2]:
        assert_same_case(output / case, reference_outputs / case)


@pytest.mark.slow
def test_a_run_killed_while_writing_leaves_only_complete_cases(
    reference_outputs, inference_cases, tiny_weights, tmp_path
):
    output = tmp_path / "killed"
    run = subprocess.Popen(
        inference_command(tiny_weights, output, "--datalist", str(inference_cases)),
        env=SINGLE_THREAD_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    second = CASES[1]
    deadline = time.monotonic() + 300
    # kill once the first case is in place and the second case's first file is written: its meshes, report and
    # figure are still to come, seconds of work
    while run.poll() is None and time.monotonic() < deadline:
        partials = list(output.glob(f".{second}.*.partial")) if output.is_dir() else []
        if (output / CASES[0]).is_dir() and any((p / "anomaly_map.nii.gz").exists() for p in partials):
            break
        time.sleep(0.005)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert _visible(output) == [CASES[0]], "not killed while writing the second case"
    assert_same_case(output / CASES[0], reference_outputs / CASES[0])
    left = _hidden(output)
    assert len(left) == 1 and PARTIAL.fullmatch(left[0])["case"] == second, left  # what a kill leaves behind
    stale = sorted(p.name for p in (output / left[0]).iterdir())

    rerun = subprocess.run(
        inference_command(tiny_weights, output, "--datalist", str(inference_cases), "--overwrite", "true"),
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _visible(output) == list(CASES)
    for case in CASES:
        assert_same_case(output / case, reference_outputs / case)
    assert _hidden(output) == left and sorted(p.name for p in (output / left[0]).iterdir()) == stale  # left alone


def _run_kind(case: Path, reference: Path) -> str:
    """Which of the two same-case runs wrote ``case``: ``"smoothed"`` (the reference settings), ``"unsmoothed"``
    (``--stl_smoothing_iterations 0 --write_figure false``); fails on a folder that mixes their files."""
    if (case / "overview.png").exists():
        assert_same_case(case, reference)
        return "smoothed"
    meshes = sorted(p.name for p in reference.glob("*.stl"))
    assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in reference.iterdir() if p.suffix != ".png")
    for name in (p.name for p in case.iterdir() if p.suffix != ".stl"):
        assert (case / name).read_bytes() == (reference / name).read_bytes(), name
    assert all((case / m).read_bytes() != (reference / m).read_bytes() for m in meshes), "smoothed meshes in the mix"
    return "unsmoothed"


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [True, False])
def test_two_runs_writing_the_same_case_at_once_leave_one_complete_output(
    overwrite, reference_outputs, inference_cases, tiny_weights, tmp_path
):
    output, case = tmp_path / "same", CASES[0]
    common = ("--input", str(inference_cases.parent / f"{case}.nii.gz"), "--overwrite", str(overwrite).lower())
    unsmoothed = ("--stl_smoothing_iterations", "0", "--write_figure", "false")
    codes, errors = _run_together(
        inference_command(tiny_weights, output, *common),
        inference_command(tiny_weights, output, *common, *unsmoothed),
        logs=tmp_path / "logs",
    )
    assert _visible(output) == [case] and _hidden(output) == []
    kind = _run_kind(output / case, reference_outputs / case)
    if overwrite:  # both succeed, the last to finish replaced the other's case as a whole
        assert codes == [0, 0], [e[-2000:] for e in errors]
    else:  # the first to finish wins, the other stops with a clear error and leaves nothing
        assert sorted(code == 0 for code in codes) == [False, True], [e[-2000:] for e in errors]
        winner = codes.index(0)
        assert re.search(r"case output exists|output folder is not empty", errors[1 - winner]), errors[1 - winner]
        assert kind == ("smoothed", "unsmoothed")[winner]


# --- in process ------------------------------------------------------------------------------------------------------


def _case_data(regions: int) -> dict:
    """The keys the output steps of configs/inference.json read, for a 12^3 case ``case07`` with ``regions`` cubic
    wound regions (already in the input's grid)."""
    meta = {"filename_or_obj": "/data/case07.nii.gz"}
    wound = torch.zeros(1, 12, 12, 12)
    for label in range(1, regions + 1):
        wound[0, 4 * label - 3 : 4 * label, 2:6, 2:6] = label

    def tensor(values: torch.Tensor) -> MetaTensor:
        return MetaTensor(values.clone(), affine=torch.eye(4, dtype=torch.float64), meta=dict(meta))

    anomaly = torch.rand(1, 12, 12, 12, generator=torch.Generator().manual_seed(regions))
    return {
        "anomaly_map": tensor(anomaly),
        "pred": tensor(wound),
        "image": tensor(torch.full((1, 12, 12, 12), 0.7)),
        "pred_anomaly": tensor(anomaly),
        "pred_recon1": tensor(torch.full((1, 12, 12, 12), 0.7)),
        "pred_recon2": tensor(torch.full((1, 12, 12, 12), 0.6)),
        "wound": tensor(wound),
        "search_region": tensor(torch.ones(1, 12, 12, 12)),
    }


def _writer(output: Path, run: str, overwrite: bool) -> Callable[[dict], dict]:
    """The config's scoring, report and writing steps, the report marked with ``run`` as the model version (called in
    turn, not through ``Compose``, which would wrap the errors)."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    overrides = {"output_dir": str(output), "overwrite": overwrite, "write_figure": False, "model_version": run}
    parser.update({"bundle_root": str(ROOT), "stl_smoothing_iterations": 0, **overrides})
    ids = ("scoring_steps", "report_steps", "writing_steps")
    steps = [parser.get_parsed_content(f"{name}#{i}") for name in ids for i in range(len(parser[name]))]

    def write(data: dict) -> dict:
        for step in steps:
            data = step(data)
        return data

    return write


def _assert_written_by(case: Path, run: str, regions: int) -> None:
    report = json.loads((case / "report.json").read_text())
    assert report["model"]["version"] == run and report["num_regions"] == regions
    assert len(list(case.glob("*.stl"))) == regions


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_case_finished_by_another_run_meanwhile_is_never_mixed(tmp_path, monkeypatch, overwrite):
    """Run B writes case07 completely while run A is between its first file and its rename: without overwrite, A
    stops with a clear error and B's case stays; with it, A's case replaces B's as a whole."""
    output = tmp_path / "out"
    output.mkdir()
    write_meshes = bundle.stl.write_region_stls
    interleaved = []

    def meshes_then_the_other_run(*args, **kwargs):
        if not interleaved:
            interleaved.append(True)
            _writer(output, "B", overwrite)(_case_data(regions=1))
        return write_meshes(*args, **kwargs)

    monkeypatch.setattr(bundle.stl, "write_region_stls", meshes_then_the_other_run)
    first = _writer(output, "A", overwrite)
    if overwrite:
        first(_case_data(regions=2))
        _assert_written_by(output / "case07", "A", regions=2)
    else:
        with pytest.raises(ValueError, match="case07: case output exists"):
            first(_case_data(regions=2))
        _assert_written_by(output / "case07", "B", regions=1)
    assert interleaved and sorted(p.name for p in output.iterdir()) == ["case07"]  # no temporary folder left


def test_a_replaced_case_is_renamed_aside_whole_then_deleted(tmp_path, monkeypatch):
    """With overwrite, the earlier case folder is moved aside in one rename (never emptied file by file in place)."""
    output = tmp_path / "out"
    output.mkdir()
    _writer(output, "old", False)(_case_data(regions=1))
    renames = []
    rename = os.rename

    def recording_rename(source, destination):
        renames.append((Path(source).name, Path(destination).name))
        rename(source, destination)

    monkeypatch.setattr(bundle.outputs.os, "rename", recording_rename)
    _writer(output, "new", True)(_case_data(regions=2))
    _assert_written_by(output / "case07", "new", regions=2)
    assert [re.sub(r"[0-9a-f]{8}", "*", name) for move in renames for name in move] == [
        ".case07.*.partial",
        "case07",
        "case07",
        ".case07.*.replaced",
        ".case07.*.partial",
        "case07",
    ]
    assert sorted(p.name for p in output.iterdir()) == ["case07"]


def test_case_outputs_get_the_permissions_of_any_new_file(tmp_path):
    """Not 0700/0600 as ``tempfile`` would make them: other users of a shared output folder can read a case."""
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "file").write_text("")
    output = tmp_path / "out"
    output.mkdir()
    _writer(output, "A", False)(_case_data(regions=2))
    case = output / "case07"
    assert case.stat().st_mode == reference.stat().st_mode
    files = list(case.iterdir())
    assert {p.suffix for p in files} >= {".gz", ".nrrd", ".stl", ".json"}
    assert {p.stat().st_mode for p in files} == {(reference / "file").stat().st_mode}


def test_temporaries_left_by_a_killed_run_do_not_make_a_folder_non_empty(tmp_path):
    output = tmp_path / "out"
    (output / ".case07.0123abcd.partial").mkdir(parents=True)
    (output / ".case07.0123abcd.partial" / "anomaly_map.nii.gz").write_bytes(b"half")
    (output / ".case08.4567cdef.replaced").mkdir()
    (output / ".metrics.json.89abcdef.partial").write_text("{")
    assert all(is_temporary(p) for p in output.iterdir())
    assert prepare_output_dir(output) == output
    (output / "case09").mkdir()
    with pytest.raises(ValueError, match="not empty"):
        prepare_output_dir(output)
    (output / "case09").rmdir()
    (output / ".hidden_user_file").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        prepare_output_dir(output)


@pytest.mark.parametrize("typed", ["false", "no"])
def test_false_typed_on_the_command_line_means_false(typed, tmp_path):
    """``monai.bundle run`` reads its arguments with Python Fire, which passes ``--overwrite false`` as the string
    "false", true in Python: the configs read their switches with ``monai.utils.str2bool``."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "case07").mkdir()
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    switches = {"overwrite": typed, "write_figure": typed, "write_slicer_segmentation": typed}
    parser.update({"bundle_root": str(ROOT), "output_dir": str(taken), **switches})
    writer = parser.get_parsed_content("writing_steps#0")
    assert isinstance(writer, WriteCaseFolderd) and writer.overwrite is False
    assert not [w for w in writer.writers if isinstance(w, (SaveOverviewd, SaveSlicerSegmentationd))]
    with pytest.raises(RuntimeError) as refused:  # MONAI wraps the component's error
        parser.get_parsed_content("checked_output_dir")
    assert "output folder is not empty" in str(refused.value.__cause__)

    training = ConfigParser()
    training.read_config(str(ROOT / "configs" / "train.json"))
    (taken / "model.pt").write_bytes(b"")
    training.update({"bundle_root": str(ROOT), "output_dir": str(taken), "overwrite": typed})
    with pytest.raises(RuntimeError) as refused:
        training.get_parsed_content("checked_output_dir")
    assert "--overwrite true" in str(refused.value.__cause__)
    training["overwrite"] = "true"
    assert training.get_parsed_content("checked_output_dir", lazy=False) == taken
