"""Anatomical search region: the voxels within R mm of jaw tissue, where ONJ/ORN wounds can lie (method.md section 9).

Osteonecrosis and osteoradionecrosis of the jaw are lesions of the jaws' bone, yet the two reconstructions also
differ far from the jaw (orbits, nasal cavity, skull base, the thin cranial vault). The wound regions and the subject
score therefore count only voxels of this region; ``radius_mm=None`` switches it off (the paper's behaviour).

Jaw tissue is mandible, upper and lower teeth and canal (labels 2-5, x' = (label + 5) / 10 = 0.7, 0.8, 0.9, 1.0), not
the upper skull (label 1, x' 0.6) nor the background. It is read from two images on the model's 2 mm grid:

- the input x': jaw where x' >= 0.65 (``JAW_X``, halfway between skull and mandible; the input holds exact label
  values, so this is the label set, not a tunable number);
- the stage-2 reconstruction G2, which restores the teeth and bone a healthy jaw would have, so that a fully destroyed
  mandible segment (empty in the input) stays inside: tissue that G2 restores in empty input voxels
  (G2 >= ``reconstruction_threshold``, default 0.55 as the grow step reads G2) and that is connected (26-neighbours)
  to the input's jaw tissue counts as jaw.

G2 is read by connection, not by value: it is a blurred regression, and with the shipped demo weights its mean on
mandible voxels is about 0.63 while about 10 % of the upper-skull voxels reach 0.65, scattered over the whole
skull, so no threshold on G2 alone separates jaw from skull. Reading G2 >= 0.65 everywhere put about 90 % of the skull
lying more than 30 mm from the jaw into the region (R = 10 mm) on the tuning phantoms; reading it only in empty
voxels still let the cranial-vault gaps that G2 closes in. Restored tissue connected to the input's jaw kept every
lesion voxel of the tuning phantoms inside at R = 15 mm, and none of that distant skull (docs/results.md).

Upper teeth count as jaw tissue. DentalSegmentator labels the maxillary alveolar process as upper skull, but the
teeth stand in it and their roots reach into it, so the alveolar bone around present upper teeth lies within R mm of
them, and alveolar bone lost to a maxillary lesion is restored by G2 next to the teeth (connected, so it counts). The
alveolar ridge of an edentulous maxilla is covered only where it lies within R mm of the mandible, the lower teeth or
tissue that G2 restores next to them: raise R or switch the region off for such scans.

Gap filled: MONAI has no transform that turns a label image into the set of voxels within a physical distance of some
of its classes. The distance is MONAI's ``distance_transform_edt`` (scipy on the CPU, cuCIM on a GPU when installed)
with the voxel spacing in mm, so the region is exact for anisotropic voxels (no ball in voxel units); the connected
components are scipy's ``ndimage.label``, as in :class:`bundle.postprocessing.LabelRegions`. Masking a map by the
region is MONAI's ``MaskIntensityd``; clipping a region label map is :class:`bundle.postprocessing.MaskRegionsd`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Transform
from monai.transforms.utils import distance_transform_edt
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple_rep
from scipy import ndimage

from bundle.postprocessing import connectivity_footprint
from bundle.transforms import source_name

JAW_X = 0.65
DEFAULT_RADIUS_MM = 15.0
DEFAULT_RECONSTRUCTION_THRESHOLD = 0.55
# distances are square roots of sums of squared spacings: a voxel at exactly R mm must not fall out by rounding
DISTANCE_TOLERANCE_MM = 1e-6


class JawSearchRegion(Transform):
    """Mask of the voxels within ``radius_mm`` millimetres of jaw tissue: in the input, or restored by the stage-2
    reconstruction in empty input voxels connected to the input's jaw.

    Args:
        radius_mm: R, the largest Euclidean distance in mm from a voxel's centre to the centre of the nearest jaw voxel
            (inclusive); 0 keeps the jaw voxels only. ``None`` switches the region off: every voxel is inside.
        reconstruction_threshold: an empty input voxel holds restored tissue when G2 is at or above this value
            (0.55: halfway between background and the lowest tissue, as :class:`bundle.postprocessing.GrowRegions`).
        spacing: voxel size in mm (one number or one per axis), overriding the input's MetaTensor affine.

    ``__call__(img, reconstruction=None)``: img (C, X, Y, Z) input x' in [0, 1] (jaw where any channel >= 0.65, empty
    where every channel is 0); reconstruction (C', X, Y, Z) G2 on the same grid (restored tissue where any channel
    reaches the threshold), or None to read the input alone. Returns (1, X, Y, Z) bool with the input's type, device
    and meta data. With no jaw tissue at all the region is empty, and a warning says so: nothing can count.
    """

    def __init__(
        self,
        radius_mm: float | None = DEFAULT_RADIUS_MM,
        reconstruction_threshold: float = DEFAULT_RECONSTRUCTION_THRESHOLD,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        if radius_mm is not None and (isinstance(radius_mm, (bool, str)) or not radius_mm >= 0):
            raise ValueError(
                f"radius_mm must be a distance in mm >= 0, or None to switch the region off; got {radius_mm!r}"
            )
        self.radius_mm = None if radius_mm is None else float(radius_mm)
        self.reconstruction_threshold = float(reconstruction_threshold)
        self.spacing = None if spacing is None else tuple(float(s) for s in ensure_tuple_rep(spacing, 3))

    def voxel_spacing(self, img: NdarrayOrTensor) -> tuple[float, ...]:
        if self.spacing is not None:
            return self.spacing
        affine = getattr(img, "affine", None)
        if affine is None:
            raise ValueError("the search region radius is in mm: pass `spacing` or a MetaTensor with an affine")
        return tuple(float(s) for s in affine_to_spacing(affine, r=3))

    def jaw_tissue(self, img: torch.Tensor, reconstruction: torch.Tensor | None) -> torch.Tensor:
        """(1, X, Y, Z) bool: jaw tissue in the input, and tissue G2 restores in empty voxels connected to it."""
        jaw = (img >= JAW_X).any(dim=0, keepdim=True)
        if reconstruction is None:
            return jaw
        empty = (img == 0).all(dim=0, keepdim=True)
        restored = (reconstruction.to(img.device) >= self.reconstruction_threshold).any(dim=0, keepdim=True)
        candidates = (jaw | (empty & restored))[0].cpu().numpy()
        components, count = ndimage.label(candidates, connectivity_footprint(3).numpy())
        joins_jaw = np.zeros(count + 1, dtype=bool)  # per component; input jaw voxels are never background (0)
        joins_jaw[components[jaw[0].cpu().numpy()]] = True
        return torch.from_numpy(joins_jaw[components])[None].to(img.device)

    def __call__(self, img: NdarrayOrTensor, reconstruction: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        x = convert_to_tensor(img, track_meta=False)
        g2 = None if reconstruction is None else convert_to_tensor(reconstruction, track_meta=False)
        for name, image in (("input", x), ("reconstruction", g2)):
            if image is not None and (image.ndim != 4 or image.shape[1:] != x.shape[1:]):
                raise ValueError(
                    f"search region: the {name} has shape {tuple(image.shape)}; expected channel-first (C, X, Y, Z) "
                    f"images on one grid (input {tuple(x.shape)})"
                )
        if self.radius_mm is None:
            region = torch.ones((1, *x.shape[1:]), dtype=torch.bool, device=x.device)
        else:
            jaw = self.jaw_tissue(x, g2)
            if jaw.any():
                distance = distance_transform_edt(~jaw, sampling=list(self.voxel_spacing(img)), float64_distances=True)
                region = distance <= self.radius_mm + DISTANCE_TOLERANCE_MM
            else:
                warnings.warn(
                    f"{source_name(img)}: no jaw tissue (mandible, teeth, canal) in the input or the reconstruction, "
                    "so the anatomical search region is empty and no voxel counts; set use_search_region to false "
                    "to search the whole volume",
                    stacklevel=2,
                )
                region = torch.zeros_like(jaw)
        out, *_ = convert_to_dst_type(region, img, dtype=torch.bool)
        return out


class JawSearchRegiond(MapTransform):
    """Dictionary form of :class:`JawSearchRegion`: stores the region of the input and G2 as a new item.

    Args:
        keys: the input x' image(s) on one grid; several are stacked as channels (as MONAI's ``ConcatItemsd``).
        reconstruction_key: the stage-2 reconstruction G2 on the same grid; ``None`` reads the input alone (a
            destroyed jaw segment then falls out of the region).
        name: the key under which the (1, X, Y, Z) bool region is stored, with the first input key's meta data.
        radius_mm, reconstruction_threshold, spacing: see :class:`JawSearchRegion`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reconstruction_key: str | None = "pred_recon2",
        name: str = "search_region",
        radius_mm: float | None = DEFAULT_RADIUS_MM,
        reconstruction_threshold: float = DEFAULT_RECONSTRUCTION_THRESHOLD,
        spacing: float | Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reconstruction_key = reconstruction_key
        self.name = name
        self.region = JawSearchRegion(radius_mm, reconstruction_threshold, spacing)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            raise KeyError(f"none of the keys {self.keys} is in the data: the search region needs the input image")
        images = [convert_to_tensor(d[key], track_meta=False) for key in keys]
        if any(image.shape[1:] != images[0].shape[1:] for image in images):
            raise ValueError(f"search region: the inputs {keys} must be channel-first images on the same grid")
        # the first key's type and meta data, spacing included
        stacked, *_ = convert_to_dst_type(torch.cat([image.to(images[0].device) for image in images]), d[keys[0]])
        reconstruction = None if self.reconstruction_key is None else d[self.reconstruction_key]
        d[self.name] = self.region(stacked, reconstruction)
        return d
