"""Per-case report and writers (bundle/report.py, bundle/outputs.py) on label maps of any integer type, without
full-size copies."""

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, NibabelWriter
from monai.utils import convert_to_numpy

from bundle.outputs import SaveJSONd, SaveNiftid, WriteCaseFolderd, write_nifti
from bundle.report import CaseReportd, RegionStatisticsd, crop_to_regions, region_statistics

AFFINE = np.array([[-0.6, 0.05, 0, 60], [0, -0.6, 0, 50], [0.02, 0, 0.9, -20], [0, 0, 0, 1]], float)


def _regions() -> np.ndarray:
    regions = np.zeros((12, 10, 8), np.uint8)
    regions[1:4, 2:5, 1:3] = 1
    regions[6:11, 1:3, 4:8] = 2
    regions[7, 7, 7] = 4  # label 3 absent
    return regions


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_region_statistics_counts_each_region_whatever_the_integer_type(dtype):
    regions = _regions().astype(dtype)
    stats = region_statistics(regions, AFFINE)
    counts = np.bincount(regions.ravel().astype(np.int64))
    assert [s["label"] for s in stats] == [1, 2, 4]
    assert [s["voxels"] for s in stats] == [counts[1], counts[2], counts[4]]
    voxel_mm3 = abs(np.linalg.det(AFFINE[:3, :3]))
    assert stats[1]["volume_mm3"] == pytest.approx(counts[2] * voxel_mm3, abs=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_write_nifti_equals_monai_writer_with_set_metadata(dtype, tmp_path):
    """The affine handed to NibabelWriter directly gives the same file as ``set_metadata(meta, resample=False)``."""
    array = MetaTensor(torch.from_numpy(_regions().astype(dtype))[None], affine=torch.as_tensor(AFFINE))
    write_nifti(array, tmp_path / "ours.nii.gz", np.dtype(dtype))
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(convert_to_numpy(array).astype(dtype), channel_dim=0)
    writer.set_metadata(dict(array.meta), resample=False)
    writer.write(tmp_path / "monai.nii.gz")
    ours, monai = nib.load(tmp_path / "ours.nii.gz"), nib.load(tmp_path / "monai.nii.gz")
    assert ours.header.binaryblock == monai.header.binaryblock
    assert np.asarray(ours.dataobj).dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(monai.dataobj))


def test_crop_to_regions_keeps_every_region_in_place():
    regions = np.zeros((20, 18, 16), np.uint8)
    regions[3:6, 10:12, 4] = 1
    regions[8, 2, 9:14] = 2
    box, box_affine = crop_to_regions(regions, AFFINE)
    assert [(part.start, part.stop) for part in box] == [(3, 9), (2, 12), (4, 14)]
    assert np.count_nonzero(regions[box]) == np.count_nonzero(regions)
    assert region_statistics(regions[box], box_affine) == region_statistics(regions, AFFINE)  # same world boxes
    empty_box, _ = crop_to_regions(np.zeros((5, 5, 5), np.uint8), AFFINE)
    assert np.zeros((5, 5, 5))[empty_box].shape == (1, 1, 1)  # never empty: scipy's find_objects needs a voxel


def _labelled_case() -> dict:
    regions = MetaTensor(torch.from_numpy(_regions())[None], affine=torch.as_tensor(AFFINE))
    regions.meta["filename_or_obj"] = "/data/case03.nii.gz"
    return {"image": regions.clone(), "pred": regions, "score_a": 7}


def test_case_report_gathers_scores_regions_and_settings():
    data = RegionStatisticsd("pred")(_labelled_case())
    report = CaseReportd(
        "image", scores={"two_reconstructions": "score_a"}, settings={"grow_steps": 4}, model_version="0.6.0"
    )(data)["report"]
    assert report["case"] == "case03" and report["num_regions"] == 3 and report["thresholds"] == {"grow_steps": 4}
    assert report["subject_score"]["two_reconstructions"] == 7 and report["model"]["version"] == "0.6.0"
    volume = sum(region["volume_mm3"] for region in region_statistics(_regions(), AFFINE))
    assert report["subject_score"]["wound_volume_mm3"] == pytest.approx(volume, abs=1e-3)


def test_case_folder_is_published_whole_or_not_at_all(tmp_path, caplog):
    data = CaseReportd("image", scores={})(RegionStatisticsd("pred")(_labelled_case()))
    writers = [SaveNiftid("pred", file_names="wound", output_dtype="uint8"), SaveJSONd("report")]
    with caplog.at_level(logging.INFO):
        out = WriteCaseFolderd(writers, tmp_path)(data)
    # the log names the published folder, never the hidden one it was written into
    assert f"outputs written to {tmp_path / 'case03'}" in caplog.text and ".partial" not in caplog.text
    assert out["case_folder"] == tmp_path / "case03"
    assert sorted(p.name for p in (tmp_path / "case03").iterdir()) == ["report.json", "wound.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "case03" / "wound.nii.gz").dataobj), _regions())

    def failing(_):
        raise RuntimeError("figure backend missing")

    with pytest.raises(RuntimeError, match="figure backend"):
        WriteCaseFolderd([*writers, failing], tmp_path / "second")(data)
    assert list((tmp_path / "second").iterdir()) == []  # the partial folder is gone, nothing published
