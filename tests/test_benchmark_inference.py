"""The inference benchmark: its Markdown table, and the scan it writes at a finer spacing."""

import nibabel as nib
import numpy as np
import pytest

from scripts.benchmark_inference import markdown_table, write_scan


def test_table_lists_every_stage_and_the_speedups():
    result = {
        "median_seconds": {
            "load_preprocess": 0.05,
            "reconstructions": 1.5,
            "postprocess": 0.25,
            "invert": 0.15,
            "write": 0.05,
            "total": 2.0,
            "naive_reconstructions": 4.5,
        },
        "naive_pipeline_seconds": 5.0,
        "speedup_reconstructions": 3.0,
        "speedup_pipeline": 2.5,
        "sliding_window": {"roi_size": [48, 48, 48], "overlap": 0.125, "sw_batch_size": 8},
        "weights": "models/model.pt",
        "threads": 2,
        "peak_rss_gb": 0.8,
        "repeats": 3,
    }
    table = markdown_table(result)
    assert "| both reconstructions (windows of 48^3, overlap 0.125) | 1.50 |" in table
    assert "| naive peer, whole pipeline | 5.00 |" in table
    assert "| back to the input's grid | 0.15 |" in table and "| write NIfTI, .seg.nrrd, STL, report | 0.05 |" in table
    assert "reconstructions x3.00, whole pipeline x2.50" in table


def test_scan_at_a_finer_spacing_repeats_each_voxel_over_the_same_field_of_view(tmp_path):
    (tmp_path / "coarse").mkdir()
    (tmp_path / "fine").mkdir()
    coarse = nib.load(write_scan(tmp_path / "coarse", 2.0))
    fine = nib.load(write_scan(tmp_path / "fine", 1.0))
    assert fine.shape == tuple(2 * s for s in coarse.shape)
    np.testing.assert_array_equal(np.asarray(fine.dataobj)[::2, ::2, ::2], np.asarray(coarse.dataobj))

    def corners(image):  # world positions of the outer voxel corners
        low, high = np.full(3, -0.5), np.array(image.shape) - 0.5
        return nib.affines.apply_affine(image.affine, np.stack([low, high]))

    np.testing.assert_allclose(corners(fine), corners(coarse), atol=1e-6)
    with pytest.raises(ValueError, match="whole number"):
        write_scan(tmp_path, 0.3)
