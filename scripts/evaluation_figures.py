"""The figures of the evaluation report, like the paper's figures 3-5, drawn from evaluation run folders.

An evaluation run (``bundle.evaluation.AnomalyEvaluationHandler``) writes ``metrics.json`` and, for the first cases of
each lesion kind, ``figure_slices/<case>.npz``: the sagittal, coronal and axial slices (``PLANES``) through one voxel
of every saved volume, as ``<volume>.<plane>`` 2D float arrays of the 2 mm grid (RAS voxel axes [x, y, z]: sagittal
is (Y, Z), coronal (X, Z), axial (X, Y)). From those this module draws:

* :func:`reconstruction_figure`: volumes side by side, one row per plane (paper fig. 3: input and both stage-one
  reconstructions of a healthy subject; fig. 4: intact original, input with teeth and jaw removed, stage-two
  reconstructions);
* :func:`anomaly_maps_figure`: per case, input, both reconstructions, the anomaly maps and the wound segmentation
  against the truth (paper fig. 5);
* :func:`score_histograms`: the subject scores of healthy and lesion subjects (``metrics.json``'s ``cases``);
* :func:`mesh_figure`: the exported wound meshes (LPS millimetre STL files) over the jaw of the input label map.

Every function writes one PNG (matplotlib, Agg backend, nothing shown) atomically, under a hidden
``.<name>.<random>.partial`` name in the target folder renamed over the target, and returns its path.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402
from skimage.measure import marching_cubes  # noqa: E402
from stl import mesh as stl_mesh  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.atomic_files import hidden_name  # noqa: E402
from bundle.evaluation import PLANES  # noqa: E402

DPI = 110
PANEL_INCHES = 2.0  # width of one slice panel
MAP_CMAP = "inferno"
TRUTH_COLOUR = "lime"
WOUND_COLOUR = "red"
EPSILON = 1e-6
LABEL_BOX = {"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1.0}
# metrics.json case key -> axis label of its histogram
SCORES = {
    "score_two_reconstructions": "two-reconstruction score (voxels)",
    "score_wound_volume": "wound volume (mm^3)",
    "score_original_vs_reconstruction": "original-vs-reconstruction score (voxels)",
}
JAW_MIN_LABEL = 2  # mandible 2, teeth 3 and 4, canal 5
JAW_VOXEL_MM = 2.0
# (elevation, azimuth) in degrees, LPS axes: the front of the face is -y, the patient's left +x
VIEWS = {"from the front-left": (15.0, -45.0), "from above (front at the bottom)": (90.0, -90.0)}

Slices = Mapping[str, np.ndarray]
# volume -> column title of the grayscale columns of the anomaly figure
GRAY_COLUMNS = {"input": "input", "stage1": "reconstruction 1", "stage2": "reconstruction 2"}


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Save ``figure`` as a PNG to a hidden temporary file beside ``path`` (parent created), then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = hidden_name(path.parent, path.name, ".partial")
    try:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.05)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _slice(slices: Slices, volume: str, plane: str, owner: str) -> np.ndarray:
    """The 2D slice ``<volume>.<plane>`` of ``slices``; a missing one raises ValueError naming ``owner`` (the column
    or row it is drawn in) and the volume."""
    key = f"{volume}.{plane}"
    if key not in slices:
        raise ValueError(f"{owner!r}: volume {volume!r} is missing from its slices (no array {key!r})")
    return np.asarray(slices[key], dtype=np.float32)


def _show(axes, image: np.ndarray, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0) -> None:
    """Draw a 2D slice (first array axis horizontal, second vertical, upwards) without ticks."""
    axes.imshow(image.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def _contour(axes, mask: np.ndarray, colour: str) -> None:
    """Outline the voxels > 0.5 of a 2D mask on a slice drawn by :func:`_show` (nothing for an empty mask)."""
    if (mask > 0.5).any() and (mask <= 0.5).any():
        axes.contour(mask.T, levels=[0.5], colors=colour, linewidths=1.2)


def _blank(axes, text: str) -> None:
    """An empty panel that says why it is empty."""
    axes.set_facecolor("0.9")
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def reconstruction_figure(columns: Sequence[tuple[str, Slices, str]], path: str | os.PathLike, title: str = "") -> Path:
    """Volumes side by side through one point: one row per plane of ``PLANES``, one column per entry.

    Args:
        columns: (column title, slices, volume name); ``slices`` maps ``<volume>.<plane>`` to a 2D array with values
            in [0, 1] (x' label intensities: an ``np.load`` of a ``figure_slices`` npz, or a dict).
        path: the PNG to write.
        title: the figure's title.

    Drawn in grayscale from 0 (black) to 1 (white). A column whose volume is missing raises ValueError naming the
    column title and the volume. Returns ``path``.
    """
    if not columns:
        raise ValueError("reconstruction_figure needs at least one column")
    images = [[_slice(slices, volume, plane, name) for name, slices, volume in columns] for plane in PLANES]
    figure = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * len(PLANES)))
    grid = figure.subplots(len(PLANES), len(columns), squeeze=False)
    for row, plane in enumerate(PLANES):
        for column, (name, _, _) in enumerate(columns):
            _show(grid[row, column], images[row][column])
            if row == 0:
                grid[row, column].set_title(name, fontsize=9)
        grid[row, 0].set_ylabel(plane, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _anomaly_row(panels: Sequence, name: str, slices: Slices, plane: str, maps: Sequence[str]) -> None:
    """Draw one case of :func:`anomaly_maps_figure` into its row of axes (``GRAY_COLUMNS``, ``maps``, overlay)."""
    panels = iter(panels)
    for volume in GRAY_COLUMNS:
        axes = next(panels)
        if f"{volume}.{plane}" in slices:
            _show(axes, _slice(slices, volume, plane, name))
        else:
            _blank(axes, "not saved")
    for volume in maps:
        axes = next(panels)
        if f"{volume}.{plane}" not in slices:
            _blank(axes, "not saved")
            continue
        values = _slice(slices, volume, plane, name)
        _show(axes, values, cmap=MAP_CMAP, vmax=max(float(values.max()), EPSILON))
        axes.text(0.03, 0.97, f"max {values.max():.3g}", fontsize=7, va="top", transform=axes.transAxes, bbox=LABEL_BOX)
    axes = next(panels)
    _show(axes, _slice(slices, "input", plane, name))
    for volume, colour in (("truth", TRUTH_COLOUR), ("wound", WOUND_COLOUR)):
        if f"{volume}.{plane}" in slices:
            _contour(axes, _slice(slices, volume, plane, name), colour)


def anomaly_maps_figure(
    rows: Sequence[tuple[str, Slices]], path: str | os.PathLike, map_names: Sequence[str], plane: str = "axial"
) -> Path:
    """Per case, on one plane: input, both reconstructions, the anomaly maps and the wound against the truth.

    Args:
        rows: (row title such as ``"case_003 onj"``, slices); ``slices`` maps ``<volume>.<plane>`` to a 2D array:
            ``input``, ``stage1``, ``stage2`` in [0, 1]; the maps of ``map_names`` >= 0; ``truth`` and ``wound``
            0/1 masks (absent for a healthy subject, or when not saved).
        path: the PNG to write.
        map_names: anomaly maps to show (e.g. ``"two_reconstructions"``, ``"original_vs_reconstruction"``,
            ``"latent_disagreement"``), each as a column when at least one row has it.
        plane: one of ``PLANES``.

    Columns: input, reconstruction 1 (``stage1``), reconstruction 2 (``stage2``) in grayscale [0, 1]; each map in
    ``MAP_CMAP`` from 0 to its maximum over that row's slice (written in the panel); last, the input with the
    contours of the truth (green) and of the wound segmentation (red). A row without ``input`` raises ValueError
    naming it; other missing volumes leave an empty panel. Returns ``path``.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    if not rows:
        raise ValueError("anomaly_maps_figure needs at least one row")
    for name, slices in rows:
        _slice(slices, "input", plane, name)
    maps = [name for name in map_names if any(f"{name}.{plane}" in slices for _, slices in rows)]
    titles = list(GRAY_COLUMNS.values()) + [name.replace("_", " ") for name in maps] + ["wound vs truth"]
    figure = Figure(figsize=(PANEL_INCHES * len(titles), PANEL_INCHES * len(rows) + 0.5))
    grid = figure.subplots(len(rows), len(titles), squeeze=False)
    for row, (name, slices) in enumerate(rows):
        _anomaly_row(grid[row], name, slices, plane, maps)
        grid[row, 0].set_ylabel(name, fontsize=9)
    for axes, title in zip(grid[0], titles):
        axes.set_title(title, fontsize=9)
    legend = [
        Patch(facecolor=matplotlib.colormaps[MAP_CMAP](0.8), label=f"anomaly maps: {MAP_CMAP}, 0 to the panel's max"),
        Line2D([], [], color=TRUTH_COLOUR, label="truth (lesion)"),
        Line2D([], [], color=WOUND_COLOUR, label="wound segmentation"),
    ]
    figure.tight_layout(rect=(0, 0.5 / figure.get_figheight(), 1, 1))
    figure.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return _save(figure, path)


def _symlog(values: np.ndarray) -> np.ndarray:
    """sign(v) log(1 + |v|): the axis on which the histogram bins are equal."""
    return np.sign(values) * np.log1p(np.abs(values))


def _symexp(values: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_symlog`."""
    return np.sign(values) * np.expm1(np.abs(values))


def score_histograms(cases: Sequence[Mapping], path: str | os.PathLike, bins: int = 20) -> Path:
    """Overlaid histograms of each subject score (``SCORES``) of healthy and lesion subjects, one panel per score.

    Args:
        cases: ``metrics.json``'s ``cases``: dicts with ``lesion`` (``"none"`` for healthy) and the score keys
            (counts of voxels, mm^3; >= 0, mostly 0 for healthy subjects and thousands for lesions). Cases without a
            finite score are left out of its panel.
        path: the PNG to write.
        bins: number of bins, equal in log(1 + score) and the same for both groups.

    The x axis is symlog (linear below 1), the y axis counts subjects. Returns ``path``.
    """
    if not cases:
        raise ValueError("score_histograms needs at least one case")
    figure = Figure(figsize=(4.0 * len(SCORES), 3.0))
    for axes, (key, label) in zip(figure.subplots(1, len(SCORES), squeeze=False)[0], SCORES.items()):
        groups = {"healthy": [], "lesion": []}
        for case in cases:
            value = case.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                groups["healthy" if case.get("lesion", "none") == "none" else "lesion"].append(float(value))
        values = np.asarray(groups["healthy"] + groups["lesion"] or [0.0])
        low, high = _symlog(np.asarray([min(values.min(), 0.0), max(values.max(), 1.0)]))
        edges = _symexp(np.linspace(low, high, bins + 1))
        for (group, scores), colour in zip(groups.items(), ("tab:blue", "tab:red")):
            axes.hist(scores, bins=edges, color=colour, alpha=0.5, label=f"{group} (n={len(scores)})")
        axes.set_xscale("symlog", linthresh=1.0)
        axes.set_xlabel(label, fontsize=9)
        axes.set_ylabel("subjects", fontsize=9)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _jaw_surface(labels_path: str | os.PathLike) -> np.ndarray:
    """Triangles (M, 3, 3) of the surface of labels >= ``JAW_MIN_LABEL`` of a NIfTI label map, in LPS millimetres,
    meshed on a copy subsampled to about ``JAW_VOXEL_MM`` voxels."""
    try:
        image = nib.load(str(labels_path))
        labels = np.asarray(image.dataobj)
    except Exception as error:  # nibabel raises several types for missing, truncated or foreign files
        raise ValueError(f"{labels_path}: cannot read the label map ({error})") from None
    labels = labels.reshape(labels.shape[:3]) if labels.ndim > 3 and math.prod(labels.shape[3:]) == 1 else labels
    if labels.ndim != 3:
        raise ValueError(f"{labels_path}: expected a 3D label map, got shape {labels.shape}")
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    stride = [max(1, round(JAW_VOXEL_MM / float(s))) for s in spacing]
    jaw = labels[:: stride[0], :: stride[1], :: stride[2]] >= JAW_MIN_LABEL
    if not jaw.any():
        raise ValueError(f"{labels_path}: no jaw (no label >= {JAW_MIN_LABEL})")
    vertices, faces, _, _ = marching_cubes(np.pad(jaw, 1).astype(np.float32), level=0.5)
    voxels = (vertices - 1.0) * np.asarray(stride)
    world = voxels @ image.affine[:3, :3].T + image.affine[:3, 3]
    return (world * np.asarray([-1.0, -1.0, 1.0]))[faces]


def _stl_triangles(stl_path: str | os.PathLike) -> np.ndarray:
    """Triangles (M, 3, 3) of an STL file (coordinates as stored: LPS millimetres for the bundle's meshes)."""
    try:
        triangles = np.asarray(stl_mesh.Mesh.from_file(str(stl_path)).vectors, dtype=np.float64)
    except Exception as error:  # numpy-stl raises several types for missing, truncated or foreign files
        raise ValueError(f"{stl_path}: cannot read the STL mesh ({error})") from None
    if triangles.ndim != 3 or len(triangles) == 0:
        raise ValueError(f"{stl_path}: the STL mesh has no triangles")
    return triangles


def mesh_figure(
    labels_path: str | os.PathLike, stl_paths: Sequence[str | os.PathLike], path: str | os.PathLike, title: str = ""
) -> Path:
    """A 3D view of the exported wound meshes over the jaw, from the front-left and from above.

    Args:
        labels_path: the input label map (NIfTI; 0 background, 1 upper skull, 2 mandible, 3/4 teeth, 5 canal, any
            spacing): the jaw is the surface of labels >= 2, meshed at about 2 mm.
        stl_paths: the case's wound meshes (STL in LPS millimetres, as ``bundle.stl`` writes them); none draws the
            jaw alone, titled "no wound region".
        path: the PNG to write.
        title: the figure's title.

    The jaw is light gray and see-through, the wounds red and drawn over it. A missing or unreadable file raises
    ValueError naming it. Returns ``path``.
    """
    wounds = [_stl_triangles(stl) for stl in stl_paths]
    jaw = _jaw_surface(labels_path)
    points = np.concatenate([jaw.reshape(-1, 3)] + [wound.reshape(-1, 3) for wound in wounds])
    low, high = points.min(axis=0), points.max(axis=0)
    figure = Figure(figsize=(4.0 * len(VIEWS), 3.2))
    for index, (view, (elevation, azimuth)) in enumerate(VIEWS.items(), start=1):
        axes = figure.add_subplot(1, len(VIEWS), index, projection="3d", computed_zorder=False)
        axes.add_collection3d(Poly3DCollection(jaw, facecolors="0.75", alpha=0.25, shade=True, zorder=1))
        for wound in wounds:
            axes.add_collection3d(Poly3DCollection(wound, facecolors=WOUND_COLOUR, shade=True, zorder=2))
        axes.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), zlim=(low[2], high[2]))
        axes.set_box_aspect(np.maximum(high - low, EPSILON), zoom=1.15)
        axes.view_init(elev=elevation, azim=azimuth)
        axes.set_axis_off()
        axes.set_title(view, fontsize=9)
    heading = f"{len(wounds)} wound region(s)" if wounds else "no wound region"
    figure.suptitle(f"{title}: {heading}" if title else heading, fontsize=10)
    legend = [Patch(facecolor="0.75", label="jaw (mandible, teeth)"), Patch(facecolor=WOUND_COLOUR, label="wound")]
    figure.subplots_adjust(left=0, right=1, bottom=0.08, top=0.84, wspace=0)
    figure.legend(handles=legend[: 1 + bool(wounds)], loc="lower center", ncol=2, fontsize=8, frameon=False)
    return _save(figure, path)
