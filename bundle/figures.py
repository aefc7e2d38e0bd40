"""Overview figure of one case: input, both reconstructions, anomaly map and wound overlay on matching slices."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from bundle.outputs import case_name


def _focus(anomaly: np.ndarray, wound: np.ndarray) -> tuple[int, int, int]:
    """Voxel the slices go through: the centre of the wound regions if any, else the anomaly map's maximum."""
    if wound.any():
        return tuple(int(round(c)) for c in np.argwhere(wound > 0).mean(axis=0))
    return tuple(int(i) for i in np.unravel_index(np.argmax(anomaly), anomaly.shape))


def save_overview(
    path: str | os.PathLike,
    image: np.ndarray,
    recon1: np.ndarray,
    recon2: np.ndarray,
    anomaly: np.ndarray,
    wound: np.ndarray,
    title: str = "",
) -> None:
    """Save a 3 x 5 PNG grid (axial, coronal, sagittal rows) of 3D arrays on one grid (RAS voxel axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    focus = _focus(anomaly, wound)
    planes = {"axial": 2, "coronal": 1, "sagittal": 0}
    columns = ("input x'", "reconstruction G1", "reconstruction G2", "anomaly (G2-G1)^2", "wound regions")
    figure, axes = plt.subplots(3, 5, figsize=(15, 9), squeeze=False)
    anomaly_max = float(anomaly.max()) or 1.0
    for row, (plane, axis) in enumerate(planes.items()):
        index = focus[axis]

        def cut(volume: np.ndarray) -> np.ndarray:
            return np.take(volume, index, axis=axis).T  # rows = second remaining axis, for an upright display

        for column, volume in enumerate((image, recon1, recon2)):
            axes[row, column].imshow(cut(volume), cmap="gray", vmin=0, vmax=1, origin="lower")
        axes[row, 3].imshow(cut(anomaly), cmap="inferno", vmin=0, vmax=anomaly_max, origin="lower")
        axes[row, 4].imshow(cut(image), cmap="gray", vmin=0, vmax=1, origin="lower")
        overlay = np.ma.masked_equal(cut(wound), 0)
        axes[row, 4].imshow(overlay, cmap="autumn", alpha=0.7, origin="lower", interpolation="nearest")
        axes[row, 0].set_ylabel(f"{plane} {index}")
    for column, label in enumerate(columns):
        axes[0, column].set_title(label)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


class SaveOverviewd(MapTransform):
    """Save :func:`save_overview` of one case as ``<folder>/overview.png``, ``<folder>`` being the case folder under
    ``folder_key`` (:class:`bundle.outputs.WriteCaseFolderd`).

    Args:
        keys: the five (1, X, Y, Z) maps on one grid, in order: input, reconstruction 1, reconstruction 2, anomaly map,
            wound regions (the inference config's 2 mm ones).
        folder_key: key of the folder to write into.
        file_name: the figure's file name.
    """

    def __init__(self, keys: KeysCollection, folder_key: str = "case_folder", file_name: str = "overview.png") -> None:
        super().__init__(keys)
        if len(self.keys) != 5:
            raise ValueError(f"expected the keys of input, both reconstructions, anomaly and wound, got {self.keys}")
        self.folder_key, self.file_name = folder_key, file_name

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        maps = [convert_to_numpy(d[key])[0] for key in self.keys]
        save_overview(Path(d[self.folder_key]) / self.file_name, *maps, title=case_name(d[self.keys[0]]))
        return d
