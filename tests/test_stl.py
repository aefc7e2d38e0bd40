"""Region -> STL export: watertight, outward-wound meshes in LPS millimetres with 3D Slicer's SPACE=LPS header."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from stl import mesh as stl_mesh

from bundle.stl import SaveRegionMeshesd, mesh_volume, region_mesh, taubin_smooth, write_region_stls, write_stl

# anisotropic spacing (0.6, 0.9, 1.3 mm) with a rotation; FLIPPED mirrors the first axis (negative determinant)
ROTATION = np.array([[np.cos(0.4), -np.sin(0.4), 0.0], [np.sin(0.4), np.cos(0.4), 0.0], [0.0, 0.0, 1.0]])
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = ROTATION @ np.diag([0.6, 0.9, 1.3])
OBLIQUE[:3, 3] = [-12.0, 30.5, 7.0]
FLIPPED = OBLIQUE.copy()
FLIPPED[:3, 0] *= -1


def sphere(shape=(18, 17, 16), centre=(8.6, 8.2, 7.9), radius=6.0) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def read_indexed(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of an STL file, welded back into shared vertices (identical coordinates = one vertex)."""
    triangles = stl_mesh.Mesh.from_file(str(path)).vectors.astype(np.float64)
    vertices, inverse = np.unique(triangles.reshape(-1, 3), axis=0, return_inverse=True)
    return vertices, inverse.reshape(-1, 3)


def assert_closed_and_consistently_wound(faces: np.ndarray) -> None:
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed_counts = Counter(map(tuple, directed))
    assert max(directed_counts.values()) == 1, "a directed edge appears twice: inconsistent winding"
    undirected_counts = Counter(map(tuple, np.sort(directed, axis=1)))
    assert set(undirected_counts.values()) == {2}, "an edge is not shared by exactly two faces: not watertight"


def to_voxel_index(vertices_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ras = vertices_lps * np.array([-1.0, -1.0, 1.0])
    homogeneous = np.c_[ras, np.ones(len(ras))]
    return (homogeneous @ np.linalg.inv(affine).T)[:, :3]


def assert_on_region_boundary(index: np.ndarray, region: np.ndarray) -> None:
    """Each vertex lies on a voxel face between an inside and an outside voxel (within float32 rounding)."""
    fractional = np.abs(index - np.round(index))
    half = np.abs(fractional - 0.5) < 1e-3
    whole = fractional < 1e-3
    assert np.all(half.sum(axis=1) == 1) and np.all(whole.sum(axis=1) == 2)
    axis = np.argmax(half, axis=1)
    low = np.round(index).astype(int)
    low[np.arange(len(index)), axis] = np.floor(index[np.arange(len(index)), axis]).astype(int)
    high = low.copy()
    high[np.arange(len(index)), axis] += 1
    padded = np.pad(region, 1)
    inside_low = padded[tuple((low + 1).T)]
    inside_high = padded[tuple((high + 1).T)]
    assert np.all(inside_low != inside_high)


@pytest.mark.parametrize("affine", [OBLIQUE, FLIPPED], ids=["oblique", "flipped"])
def test_sphere_mesh_is_watertight_outward_and_on_the_voxel_boundary(tmp_path, affine):
    region = sphere()
    labels = MetaTensor(torch.from_numpy(region[None].astype(np.int32)), affine=torch.from_numpy(affine))
    (path,) = write_region_stls(labels, None, tmp_path, "case01_wound")
    assert path == tmp_path / "case01_wound_01.stl"
    vertices, faces = read_indexed(path)
    assert_closed_and_consistently_wound(faces)
    voxel_volume = region.sum() * abs(np.linalg.det(affine[:3, :3]))
    volume = mesh_volume(vertices, faces)
    assert volume > 0, "normals point inwards"
    assert volume == pytest.approx(voxel_volume, rel=0.10)
    assert_on_region_boundary(to_voxel_index(vertices, affine), region)
    stored_normals = stl_mesh.Mesh.from_file(str(path)).normals
    centre = vertices.mean(axis=0)
    outward = np.einsum("ij,ij->i", stored_normals, vertices[faces].mean(axis=1) - centre)
    assert np.all(outward > 0), "the file's facet normals must point away from the sphere's centre"


def test_binary_and_ascii_headers_say_space_lps(tmp_path):
    labels = MetaTensor(torch.from_numpy(sphere(radius=3)[None].astype(np.int32)), affine=torch.from_numpy(OBLIQUE))
    (binary,) = write_region_stls(labels, None, tmp_path, "binary_wound")
    header = binary.read_bytes()[:80]
    assert header.startswith(b"binary_wound_01 SPACE=LPS") and not header.startswith(b"solid")
    (ascii_path,) = write_region_stls(labels, None, tmp_path, "ascii_wound", binary=False)
    lines = ascii_path.read_text().splitlines()
    assert lines[0] == "solid ascii_wound_01 SPACE=LPS" and lines[-1].startswith("endsolid")
    assert np.allclose(read_indexed(ascii_path)[0], read_indexed(binary)[0], atol=1e-4)


def test_vertices_are_in_lps_millimetres():
    region = np.zeros((3, 3, 3), dtype=bool)
    region[1, 1, 1] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]  # voxel (1, 1, 1) is centred at RAS (12, 22, 32)
    vertices, faces = region_mesh(region, affine)
    assert np.allclose(vertices.mean(axis=0), [-12.0, -22.0, 32.0])
    assert np.allclose(vertices.min(axis=0), [-13.0, -23.0, 31.0]) and np.allclose(vertices.max(axis=0), [-11, -21, 33])
    assert mesh_volume(vertices, faces) > 0
    same_in_lps, _ = region_mesh(region, np.diag([-1.0, -1, 1, 1]) @ affine, space="LPS")
    assert np.allclose(same_in_lps, vertices)


def test_region_on_the_volume_border_closes(tmp_path):
    region = np.zeros((6, 6, 6), dtype=np.int32)
    region[0:3, 0:6, 4:6] = 1  # touches three faces of the volume
    vertices, faces = region_mesh(region, np.eye(4))
    assert_closed_and_consistently_wound(faces)
    assert mesh_volume(vertices, faces) == pytest.approx(3 * 6 * 2, rel=0.15)


def _irregular_region() -> np.ndarray:
    """Three overlapping balls with a thin bridge: concave and convex parts, as wound regions are."""
    shape = (26, 22, 18)
    region = sphere(shape, (7.3, 8.1, 8.4), 5.0) | sphere(shape, (15.2, 11.6, 9.1), 4.2)
    region |= sphere(shape, (19.0, 14.5, 8.0), 3.1)
    region[9:14, 10:12, 8:10] = True
    return region


@pytest.mark.parametrize("region", [sphere(), _irregular_region()], ids=["sphere", "irregular"])
def test_default_smoothing_keeps_the_mesh_closed_and_its_volume_within_5_percent(region):
    iterations = SaveRegionMeshesd("pred").smoothing_iterations
    assert iterations > 0  # the inference default smooths
    raw_vertices, raw_faces = region_mesh(region, FLIPPED)
    vertices, faces = region_mesh(region, FLIPPED, smoothing_iterations=iterations)
    np.testing.assert_array_equal(faces, raw_faces)  # only vertices move
    assert_closed_and_consistently_wound(faces)
    assert mesh_volume(vertices, faces) > 0  # still outward wound after the mirroring affine
    assert mesh_volume(vertices, faces) == pytest.approx(mesh_volume(raw_vertices, raw_faces), rel=0.05)


def test_smoothing_removes_the_voxel_staircase_of_a_sphere():
    centre, radius = np.array([8.6, 8.2, 7.9]), 6.0
    spread = []
    for iterations in (0, 10):
        vertices, _ = region_mesh(sphere(centre=tuple(centre), radius=radius), np.eye(4), "LPS", iterations)
        spread.append(np.std(np.linalg.norm(vertices - centre, axis=1)))
    assert spread[1] < 0.6 * spread[0], spread


def test_taubin_smoothing_rejects_parameters_that_would_not_preserve_volume():
    vertices, faces = region_mesh(sphere(), np.eye(4))
    with pytest.raises(ValueError, match="pass_band"):
        taubin_smooth(vertices, faces, 5, shrink=0.5, pass_band=3.0)
    with pytest.raises(ValueError, match="iterations"):
        taubin_smooth(vertices, faces, -1)


def test_one_file_per_region_and_overwrite_rules(tmp_path):
    labels = np.zeros((1, 20, 12, 12), dtype=np.int32)
    labels[0, 2:6, 2:6, 2:6] = 1
    labels[0, 10:14, 2:6, 2:6] = 2
    labels[0, 15:19, 6:10, 6:10] = 3
    paths = write_region_stls(labels, np.eye(4), tmp_path, "case")
    assert [p.name for p in paths] == ["case_01.stl", "case_02.stl", "case_03.stl"]
    for path in paths:
        vertices, faces = read_indexed(path)
        assert mesh_volume(vertices, faces) == pytest.approx(64, rel=0.15)
    before = paths[0].read_bytes()
    with pytest.raises(FileExistsError, match="case_01.stl"):
        write_region_stls(labels, np.eye(4), tmp_path, "case")
    assert paths[0].read_bytes() == before
    labels[labels == 3] = 0
    rewritten = write_region_stls(labels, np.eye(4), tmp_path, "case", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_01.stl", "case_02.stl"] == [p.name for p in rewritten]
    assert write_region_stls(np.zeros((1, 4, 4, 4)), np.eye(4), tmp_path / "empty", "none") == []


def test_any_case_name_gives_a_valid_tagged_header(tmp_path):
    vertices, faces = region_mesh(sphere(radius=3), np.eye(4))
    for name in ("solid_tumour", "x" * 100, "patient\u00e9\n01"):
        header = write_stl(tmp_path / "case.stl", vertices, faces, name=name).read_bytes()[:80]
        assert header.rstrip().endswith(b"SPACE=LPS") and not header.lower().startswith(b"solid")
        assert stl_mesh.Mesh.from_file(str(tmp_path / "case.stl")).vectors.shape == (len(faces), 3, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["case.stl"]  # no temporary files left behind


def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch):
    labels = np.zeros((1, 12, 6, 6), dtype=np.int32)
    labels[0, 1:4, 1:4, 1:4] = 1
    labels[0, 7:10, 1:4, 1:4] = 2
    original_save = stl_mesh.Mesh.save
    calls = []

    def failing_on_second_mesh(self, filename, fh=None, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            fh.write(b"half a mesh")
            raise OSError("disk full")
        original_save(self, filename, fh=fh, **kwargs)

    monkeypatch.setattr(stl_mesh.Mesh, "save", failing_on_second_mesh)
    with pytest.raises(OSError, match="disk full"):
        write_region_stls(labels, np.eye(4), tmp_path, "case")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # neither the first mesh nor any temporary file


def test_save_region_meshes_dict_names_files_after_the_source(tmp_path):
    labels = MetaTensor(
        torch.from_numpy(sphere(radius=3)[None].astype(np.int32)),
        affine=torch.from_numpy(OBLIQUE),
        meta={"filename_or_obj": "/data/case07.nii.gz"},
    )
    data = {"regions": labels}
    out = SaveRegionMeshesd("regions", output_dir=tmp_path, output_postfix="wound")(data)
    assert out["regions"] is labels
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.stl")] == ["case07/case07_wound_01.stl"]
    with pytest.raises(ValueError, match="MetaTensor"):
        SaveRegionMeshesd("regions", output_dir=tmp_path)({"regions": np.zeros((1, 4, 4, 4))})


def test_region_files_match_meshing_each_region_of_the_whole_grid(tmp_path):
    """The per-region bounding-box meshing places every mesh exactly where meshing the full-size mask would."""
    labels = np.zeros((30, 26, 22), dtype=np.int16)
    labels[3:12, 4:13, 2:11] = sphere((9, 9, 9), (4, 4, 4), 4.0) * 1
    labels[17:28, 12:23, 9:20] = sphere((11, 11, 11), (5, 5, 5), 5.0) * 2
    paths = write_region_stls(labels, OBLIQUE, tmp_path, "case")
    for label, path in zip((1, 2), paths):
        expected_vertices, expected_faces = region_mesh(labels == label, OBLIQUE)
        written = stl_mesh.Mesh.from_file(str(path)).vectors.astype(np.float64)
        assert np.allclose(written, expected_vertices[expected_faces], atol=1e-4)
