"""Wound regions -> 3D Slicer ``.seg.nrrd``: the segment table Slicer reads, and the same voxels and geometry as the
NIfTI label map (read back through MONAI's ITK reader)."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import LoadImage
from scipy import ndimage

from bundle.slicer_segmentation import REGION_COLOURS, write_slicer_segmentation

# oblique, anisotropic, mirrored: a geometry error cannot hide
AFFINE = np.array([[0.0, -0.4, 0.0, 12.5], [0.3, 0.0, 0.0, -40.0], [0.0, 0.0, -0.5, 8.0], [0.0, 0.0, 0.0, 1.0]])


def _regions() -> np.ndarray:
    labels = np.zeros((20, 16, 12), dtype=np.int32)
    labels[2:6, 3:8, 1:4] = 1
    labels[10:18, 9:15, 5:11] = 2
    labels[7, 1, 9] = 3
    return labels


def _header(path) -> dict[str, str]:
    with open(path, "rb") as stream:
        text = stream.read().split(b"\n\n", 1)[0].decode()
    return dict(line.split(":=", 1) for line in text.splitlines() if ":=" in line)


def test_segments_are_named_coloured_and_located_as_slicer_reads_them(tmp_path):
    labels = _regions()
    path = write_slicer_segmentation(labels[None], AFFINE, tmp_path / "wound.seg.nrrd", names=["a", "b", "c"])
    header = _header(path)
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    boxes = ndimage.find_objects(labels)
    for index, label in enumerate((1, 2, 3)):
        assert header[f"Segment{index}_Name"] == "abc"[index]
        assert header[f"Segment{index}_LabelValue"] == str(label) and header[f"Segment{index}_Layer"] == "0"
        colour = [float(c) for c in header[f"Segment{index}_Color"].split()]
        np.testing.assert_allclose(colour, REGION_COLOURS[index], atol=1e-6)
        extent = [int(v) for v in header[f"Segment{index}_Extent"].split()]
        assert extent == [v for axis in boxes[label - 1] for v in (axis.start, axis.stop - 1)]
    assert "Segment3_ID" not in header
    assert [p.name for p in tmp_path.iterdir()] == ["wound.seg.nrrd"]  # no temporary left


def test_fields_computed_within_the_regions_box_are_those_of_the_whole_grid(tmp_path):
    labels = _regions()
    whole = _header(write_slicer_segmentation(labels, AFFINE, tmp_path / "whole.seg.nrrd"))
    box = (slice(2, 18), slice(1, 15), slice(1, 11))  # holds every region; extents stay in the whole grid's indices
    boxed = _header(write_slicer_segmentation(labels, AFFINE, tmp_path / "boxed.seg.nrrd", regions_box=box))
    assert boxed == whole and "Segment2_Extent" in boxed


def test_voxels_and_geometry_match_the_label_map_through_monai(tmp_path):
    labels = _regions()
    path = write_slicer_segmentation(labels, AFFINE, tmp_path / "wound.seg.nrrd")
    image = LoadImage(reader="ITKReader", image_only=True)(str(path))
    np.testing.assert_array_equal(np.asarray(image), labels)
    np.testing.assert_allclose(np.asarray(image.affine), AFFINE, atol=1e-6)  # RAS again after the LPS file
    assert _header(path)["Segment1_Name"] == "wound 02"


def test_empty_map_writes_a_segmentation_without_segments(tmp_path):
    path = write_slicer_segmentation(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "none.seg.nrrd")
    assert not any(key.startswith("Segment0") for key in _header(path))


@pytest.mark.parametrize(
    "labels, name, message",
    [
        (np.zeros((4, 4, 4)), "wound.nrrd", "must end in .seg.nrrd"),
        (np.zeros((4, 4)), "wound.seg.nrrd", "3D region label map"),
        (np.full((4, 4, 4), 300), "wound.seg.nrrd", "0..255"),
    ],
)
def test_bad_input_is_refused_naming_the_file(tmp_path, labels, name, message):
    with pytest.raises(ValueError, match=message) as error:
        write_slicer_segmentation(labels, np.eye(4), tmp_path / name)
    assert name in str(error.value)
    assert list(tmp_path.iterdir()) == []
