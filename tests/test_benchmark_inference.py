"""The inference benchmark: its Markdown table, and the scan it writes at a finer spacing."""

import nibabel as nib
import numpy as np
import pytest

from scripts.benchmark_inference import markdown_table, write_scan, writer_ids
from scripts.benchmarking import read_config


def test_table_lists_every_stage_each_writer_and_the_speedups():
    result = {
        "median_seconds": {
            "load_preprocess": 0.05,
            "reconstructions": 1.5,
            "postprocess": 0.25,
            "scores": 0.02,
            "invert": 0.15,
            "report": 0.03,
            "wound_writer": 0.04,
            "mesh_writer": 0.01,
            "write": 0.05,
            "total": 2.0,
            "naive_reconstructions": 4.5,
        },
        "writers": ["wound_writer", "mesh_writer"],
        "overrides": {"anomaly_map_in_input_grid": "true"},
        "naive_pipeline_seconds": 5.0,
        "speedup_reconstructions": 3.0,
        "speedup_pipeline": 2.5,
        "total_over_peer_reconstructions": 0.44,
        "sliding_window": {"roi_size": [48, 48, 48], "overlap": 0.125, "sw_batch_size": 8},
        "weights": "models/model.pt",
        "threads": 2,
        "peak_rss_gb": 0.8,
        "repeats": 3,
        "lesion_volume_ml": 5.0,
        "wound_regions": 1,
    }
    table = markdown_table(result)
    assert "| both reconstructions (windows of 48^3, overlap 0.125) | 1.50 |" in table
    assert "| naive peer, whole pipeline | 5.00 |" in table
    assert "| back to the input's grid | 0.15 |" in table and "| write: wound segmentation NIfTI | 0.04 |" in table
    assert "| write: STL meshes | 0.01 |" in table and "| subject scores | 0.02 |" in table
    assert "reconstructions x3.00, whole pipeline x2.50" in table and "naive peer's reconstructions: 0.44" in table
    assert "config overrides: anomaly_map_in_input_grid=true." in table
    assert "ONJ lesion of 5 cm^3; wound regions found: 1." in table


def test_writers_are_the_configured_ones_by_config_id():
    parser = read_config("inference.json")
    assert writer_ids(parser) == [
        "anomaly_map_writer",
        "wound_writer",
        "slicer_segmentation_writer",
        "mesh_writer",
        "report_writer",
        "overview_writer",
    ]
    assert set(writer_ids(read_config("inference.json", write_figure="false", write_slicer_segmentation=False))) == {
        "anomaly_map_writer",
        "wound_writer",
        "mesh_writer",
        "report_writer",
    }


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
