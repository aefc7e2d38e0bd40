"""Post-processing of the anomaly map into wound regions (method.md section 6, the paper's Algorithm 1).

The chain, as composed in the inference config (every number a constructor argument):

1. :class:`GreyErosiond` then :class:`GreyDilationd` on the float map D = (G2 - G1)^2 (a grey-level opening that
   removes isolated hot voxels and restores the edges of true anomalies);
2. MONAI's ``AsDiscreted(threshold=...)`` -> binary mask S (no custom transform: MONAI has it);
3. :class:`LabelRegionsd`: connected components -> region label map 1..K;
4. :class:`RemoveTissueRegionsd`: drop regions lying mostly on tissue present in the input;
5. :class:`GrowRegionsd`: grow regions into empty voxels where the stage-2 reconstruction predicts tissue;
6. :class:`RemoveSoftTissued`: with the raw CBCT, remove soft-tissue voxels (no-op without it);
7. :class:`RemoveSmallRegionsd`: drop regions below a size in voxels or mm^3.

With the anatomical search region (:mod:`bundle.search_region`, an addition to the paper), MONAI's ``MaskIntensityd``
restricts the binary mask S to the region before step 3, and :class:`MaskRegionsd` clips the regions to it again
before step 7, since dilation and growing may reach beyond it.

Gaps filled: MONAI's morphology (``monai.transforms.utils_morphological_ops``) is binary-only with a box footprint;
MONAI has no transform that labels connected components into a region map, filters regions by their overlap with
another image, grows labelled regions under a constraint, or removes voxels of a label map by an intensity window or
a mask (``MaskIntensity`` zeroes them but leaves emptied regions and gaps in the numbering); ``RemoveSmallObjects``
expects one-hot data, recomputes components and does not relabel consecutively.

Every transform takes channel-first tensors (C, X, Y, Z) (numpy arrays are accepted and returned as such) and
returns its result with the input's type, device and, for a ``MetaTensor``, its meta data and affine, so that
``SaveImaged`` and ``Invertd`` work downstream. Region label maps are (1, X, Y, Z) int32 with background 0 and
regions numbered 1..K consecutively. No step loops over voxels: morphology reduces shifted views of the whole
tensor (or uses ``max_pool3d``), per-region statistics use ``bincount``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple_rep, look_up_option
from scipy import ndimage

from bundle.transforms import PerKeyd

STRUCTURES = ("ball", "cube")
SIZE_UNITS = ("voxel", "mm3")
DEFAULT_SOFT_TISSUE_WINDOW = (-500.0, 400.0)


def footprint(radius: int | Sequence[int] = 1, structure: str = "ball") -> torch.Tensor:
    """Flat 3D structuring element as a bool tensor of shape (2 r_x + 1, 2 r_y + 1, 2 r_z + 1).

    ``"ball"``: voxels within the (ellipsoidal, for a per-axis radius) Euclidean ball; radius 1 gives the 6-connected
    cross that scipy and scikit-image use by default. ``"cube"``: the full box (26-connected for radius 1).
    """
    radii = ensure_tuple_rep(radius, 3)
    if any(int(r) != r or r < 0 for r in radii):
        raise ValueError(f"radius must be non-negative integers (voxels), got {radius}")
    structure = look_up_option(structure, STRUCTURES)
    if structure == "cube":
        return torch.ones(tuple(2 * int(r) + 1 for r in radii), dtype=torch.bool)
    axes = [torch.arange(-int(r), int(r) + 1, dtype=torch.float64) / max(int(r), 1) for r in radii]
    grid = torch.meshgrid(*axes, indexing="ij")
    return sum(g**2 for g in grid) <= 1.0 + 1e-9


def connectivity_footprint(connectivity: int) -> torch.Tensor:
    """Neighbourhood of scipy's ``generate_binary_structure(3, connectivity)``: 1 faces, 2 + edges, 3 + corners."""
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    return torch.as_tensor(ndimage.generate_binary_structure(3, connectivity))


def _reduce_over_footprint(img: torch.Tensor, element: torch.Tensor, mode: str, pad_value: float) -> torch.Tensor:
    """Minimum (``mode="min"``) or maximum (``"max"``) of ``img`` over a flat footprint centred on each voxel.

    ``img`` is (..., X, Y, Z), any dtype; the volume is padded with ``pad_value`` so that voxels outside the image
    never win. A full box on a float tensor uses ``max_pool3d``; any other footprint reduces one shifted view of the
    padded tensor per footprint offset (vectorised over voxels, a loop over at most a few dozen offsets).
    """
    half = [s // 2 for s in element.shape]
    if element.all() and img.is_floating_point():
        sign = -1.0 if mode == "min" else 1.0
        flat = (sign * img).reshape(-1, *img.shape[-3:])
        pooled = F.max_pool3d(flat, kernel_size=tuple(element.shape), stride=1, padding=tuple(half))
        return (sign * pooled).reshape(img.shape)
    padding = [p for h in reversed(half) for p in (h, h)]
    padded = F.pad(img, padding, mode="constant", value=pad_value if img.is_floating_point() else int(pad_value))
    reduce = torch.minimum if mode == "min" else torch.maximum
    out = None
    x, y, z = img.shape[-3:]
    for dx, dy, dz in element.nonzero().tolist():
        view = padded[..., dx : dx + x, dy : dy + y, dz : dz + z]
        out = view.clone() if out is None else reduce(out, view)
    return out


def grey_erosion(img: torch.Tensor, radius: int | Sequence[int] = 1, structure: str = "ball") -> torch.Tensor:
    """Grey-level erosion with a flat footprint: each voxel becomes the minimum over its neighbourhood.

    ``img``: float tensor (..., X, Y, Z). Voxels outside the volume are ignored (padding with +inf), as MONAI's
    binary ``erode`` does (pad value 1), so that a blob touching the border is not eaten from outside. On a 0/1
    mask this is binary erosion.
    """
    img = img if img.is_floating_point() else img.float()
    return _reduce_over_footprint(img, footprint(radius, structure).to(img.device), "min", float("inf"))


def grey_dilation(img: torch.Tensor, radius: int | Sequence[int] = 1, structure: str = "ball") -> torch.Tensor:
    """Grey-level dilation with a flat footprint (maximum over the neighbourhood); outside voxels ignored."""
    img = img if img.is_floating_point() else img.float()
    return _reduce_over_footprint(img, footprint(radius, structure).to(img.device), "max", float("-inf"))


class GreyErosion(Transform):
    """Array transform of :func:`grey_erosion`.

    Args:
        radius: footprint radius in voxels, one int or one per axis (radius 1 removes a single hot voxel).
        structure: ``"ball"`` (default; radius 1 = 6-connected cross, scipy/scikit-image's default footprint) or
            ``"cube"``.

    Input: (C, X, Y, Z) float map, any range. Output: same shape, type and meta, float.
    """

    def __init__(self, radius: int | Sequence[int] = 1, structure: str = "ball") -> None:
        footprint(radius, structure)  # validate now, not at the first call
        self.radius = radius
        self.structure = structure

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        eroded = grey_erosion(convert_to_tensor(img, track_meta=False), self.radius, self.structure)
        out, *_ = convert_to_dst_type(eroded, img, dtype=eroded.dtype)
        return out


class GreyDilation(Transform):
    """Array transform of :func:`grey_dilation`; arguments, shapes and values as :class:`GreyErosion`."""

    def __init__(self, radius: int | Sequence[int] = 1, structure: str = "ball") -> None:
        footprint(radius, structure)
        self.radius = radius
        self.structure = structure

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        dilated = grey_dilation(convert_to_tensor(img, track_meta=False), self.radius, self.structure)
        out, *_ = convert_to_dst_type(dilated, img, dtype=dilated.dtype)
        return out


def _region_tensor(regions: NdarrayOrTensor, name: str = "region label map") -> torch.Tensor:
    """A (1, X, Y, Z) region label map as a long tensor, with a clear error for anything else."""
    labels = convert_to_tensor(regions, track_meta=False)
    if labels.ndim != 4 or labels.shape[0] != 1:
        raise ValueError(f"{name}: expected a channel-first (1, X, Y, Z) label map, got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not torch.equal(labels, torch.round(labels)):
            raise ValueError(f"{name}: a region label map must hold integer labels")
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"{name}: region labels must be >= 0")
    return labels.long()


def _same_grid(labels: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if tuple(other.shape[-3:]) != tuple(labels.shape[-3:]):
        raise ValueError(
            f"{name} has spatial shape {tuple(other.shape[-3:])} but the region map has {tuple(labels.shape[-3:])}: "
            "both must be on the same grid (run them through the same orientation/spacing transforms)"
        )


def _label_output(labels: torch.Tensor, like: NdarrayOrTensor) -> NdarrayOrTensor:
    out, *_ = convert_to_dst_type(labels.to(torch.int32), like, dtype=torch.int32)
    return out


def keep_regions(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the regions whose ``keep[label]`` is False and renumber the rest 1..K' in their original order.

    ``labels``: long tensor with values 0..K; ``keep``: bool tensor of length K + 1 (entry 0 is ignored).
    """
    keep = keep.clone()
    keep[0] = False
    lookup = torch.zeros(keep.numel(), dtype=torch.long, device=labels.device)
    lookup[keep] = torch.arange(1, int(keep.sum()) + 1, device=labels.device)
    return lookup[labels]


def region_sizes(labels: torch.Tensor) -> torch.Tensor:
    """Voxel count of every label 0..K (index = label)."""
    return torch.bincount(labels.flatten(), minlength=int(labels.max()) + 1 if labels.numel() else 1)


def remove_voxels(labels: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    """Set the voxels where ``remove`` is True to background, then drop the regions left empty and renumber 1..K'.

    ``labels``: long tensor with values 0..K; ``remove``: bool tensor of the same shape.
    """
    labels = torch.where(remove, torch.zeros_like(labels), labels)
    return keep_regions(labels, region_sizes(labels) > 0)


class LabelRegions(Transform):
    """Connected components of a binary mask -> region label map (scipy ``ndimage.label``).

    Args:
        connectivity: 1 (faces, 6 neighbours), 2 (+ edges, 18) or 3 (+ corners, 26; the default, as in
            configs/inference.json).

    Input: (1, X, Y, Z) mask; any voxel > 0 is foreground (e.g. the 0/1 output of ``AsDiscrete(threshold=...)``).
    Output: (1, X, Y, Z) int32, background 0, regions 1..K numbered in raster order of their first voxel.
    """

    def __init__(self, connectivity: int = 3) -> None:
        self.structure = connectivity_footprint(connectivity).numpy()

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        mask = convert_to_tensor(img, track_meta=False)
        if mask.ndim != 4 or mask.shape[0] != 1:
            raise ValueError(f"expected a channel-first (1, X, Y, Z) mask, got shape {tuple(mask.shape)}")
        labels, _ = ndimage.label((mask[0] > 0).cpu().numpy(), structure=self.structure)
        return _label_output(torch.from_numpy(labels).to(mask.device)[None], img)


class RemoveTissueRegions(Transform):
    """Drop the regions that lie mostly on tissue present in the input (Algorithm 1, ``overlap(R_i, S)``).

    A wound is where a healthy jaw would have bone or teeth and the scan has none, so a region whose voxels are
    mostly tissue in the input is a reconstruction difference, not a defect.

    Args:
        max_tissue_fraction: region i is dropped when more than this fraction of its voxels have input > 0
            (a region at exactly the fraction is kept). Default 0.5: "most of it".

    ``__call__(regions, image)``: regions (1, X, Y, Z) label map; image (C, X, Y, Z) on the same grid, the x' image
    or the label map (tissue = value > 0 in any channel). Returns the filtered map renumbered 1..K'.
    """

    def __init__(self, max_tissue_fraction: float = 0.5) -> None:
        if not 0.0 <= max_tissue_fraction <= 1.0:
            raise ValueError(f"max_tissue_fraction must lie in [0, 1], got {max_tissue_fraction}")
        self.max_tissue_fraction = max_tissue_fraction

    def __call__(self, regions: NdarrayOrTensor, image: NdarrayOrTensor) -> NdarrayOrTensor:
        labels = _region_tensor(regions)
        tissue_img = convert_to_tensor(image, track_meta=False).to(labels.device)
        _same_grid(labels, tissue_img, "input image")
        tissue = (tissue_img.reshape(-1, *tissue_img.shape[-3:]) > 0).any(dim=0, keepdim=True)
        sizes = region_sizes(labels)
        on_tissue = torch.bincount(labels[tissue], minlength=sizes.numel())
        fraction = on_tissue.double() / sizes.clamp(min=1).double()
        keep = (sizes > 0) & (fraction <= self.max_tissue_fraction)
        return _label_output(keep_regions(labels, keep), regions)


class GrowRegions(Transform):
    """Grow each region into neighbouring voxels that are empty in the input and where the stage-2 reconstruction
    predicts tissue, for at most ``steps`` one-voxel dilation steps: this fills the defect (Algorithm 1, ``grow``).

    Args:
        tissue_threshold: a voxel may be added when the stage-2 reconstruction G2 is >= this value (0.45, chosen on
            the tuning set with the shipped weights, docs/tuning.json; method.md's 0.55 lies halfway between
            background 0 and the lowest tissue intensity, upper skull x' = 0.6).
        steps: the most dilation steps (each adds a one-voxel shell); 0 leaves the regions as they are.
        connectivity: neighbourhood of one step, as :func:`connectivity_footprint` (1 = 6 neighbours).

    When two regions reach the same voxel in the same step, the region with the lower label takes it
    (deterministic, independent of the device). Voxels already in a region are never reassigned.

    ``__call__(regions, image, reconstruction)``: regions (1, X, Y, Z) label map; image (C, X, Y, Z) input x'
    (empty = 0 in every channel); reconstruction (1, X, Y, Z) G2 in [0, 1]. Returns the grown label map.
    """

    def __init__(self, tissue_threshold: float = 0.45, steps: int = 4, connectivity: int = 1) -> None:
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.tissue_threshold = tissue_threshold
        self.steps = int(steps)
        self.neighbourhood = connectivity_footprint(connectivity)

    def __call__(
        self, regions: NdarrayOrTensor, image: NdarrayOrTensor, reconstruction: NdarrayOrTensor
    ) -> NdarrayOrTensor:
        labels = _region_tensor(regions)
        device = labels.device
        input_img = convert_to_tensor(image, track_meta=False).to(device)
        predicted = convert_to_tensor(reconstruction, track_meta=False).to(device)
        _same_grid(labels, input_img, "input image")
        _same_grid(labels, predicted, "stage-2 reconstruction")
        empty = (input_img.reshape(-1, *input_img.shape[-3:]) == 0).all(dim=0, keepdim=True)
        tissue = (predicted.reshape(-1, *predicted.shape[-3:]) >= self.tissue_threshold).all(dim=0, keepdim=True)
        allowed = empty & tissue
        unreached = int(labels.max()) + 1 if labels.numel() else 1
        neighbourhood = self.neighbourhood.to(device)
        for _ in range(self.steps):
            candidates = torch.where(labels > 0, labels, torch.full_like(labels, unreached))
            lowest_neighbour = _reduce_over_footprint(candidates, neighbourhood, "min", unreached)
            added = allowed & (labels == 0) & (lowest_neighbour < unreached)
            if not added.any():
                break
            labels = torch.where(added, lowest_neighbour, labels)
        return _label_output(labels, regions)


class RemoveSoftTissue(Transform):
    """Remove region voxels whose raw CBCT intensity lies in a soft-tissue window (paper section 6.1).

    After growing, a region may extend over gingiva and mucosa that cover the exposed bone; what is left keeps the
    air-filled defect. Regions emptied by the removal are dropped and the rest renumbered 1..K' (a region is not
    split into components again).

    Args:
        window: (low, high), inclusive, in the CBCT's units. Default (-500, 400) HU: above air and lung-like values,
            below cancellous bone (fat about -100, muscle and mucosa 0..100 HU). CBCT grey values are not calibrated
            Hounsfield units and vary between scanners: check the window on a scan of the device in use.

    ``__call__(regions, cbct)``: regions (1, X, Y, Z) label map; cbct (1, X, Y, Z) raw intensities on the same grid
    (resample it with the label map's orientation/spacing transforms, bilinear). Returns the filtered label map.
    """

    def __init__(self, window: Sequence[float] = DEFAULT_SOFT_TISSUE_WINDOW) -> None:
        low, high = (float(v) for v in window)
        if low > high:
            raise ValueError(f"soft-tissue window must be (low, high) with low <= high, got {tuple(window)}")
        self.window = (low, high)

    def __call__(self, regions: NdarrayOrTensor, cbct: NdarrayOrTensor) -> NdarrayOrTensor:
        labels = _region_tensor(regions)
        intensity = convert_to_tensor(cbct, track_meta=False).to(labels.device)
        _same_grid(labels, intensity, "CBCT")
        if intensity.ndim == 4 and intensity.shape[0] != 1:
            raise ValueError(f"CBCT: expected one channel, got shape {tuple(intensity.shape)}")
        intensity = intensity.reshape(labels.shape)
        soft = (intensity >= self.window[0]) & (intensity <= self.window[1])
        return _label_output(remove_voxels(labels, soft), regions)


class MaskRegions(Transform):
    """Keep only the region voxels inside a mask, e.g. the anatomical search region of
    :class:`bundle.search_region.JawSearchRegion`. Regions left empty are dropped and the rest renumbered 1..K' (a
    region cut in two by the mask keeps one label).

    ``__call__(regions, mask)``: regions (1, X, Y, Z) label map; mask (1, X, Y, Z) on the same grid, inside where
    > 0 (bool or numeric, as MONAI's ``MaskIntensity`` reads it). Returns the clipped label map.
    """

    def __call__(self, regions: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        labels = _region_tensor(regions)
        inside = convert_to_tensor(mask, track_meta=False).to(labels.device)
        _same_grid(labels, inside, "mask")
        if inside.ndim != 4 or inside.shape[0] != 1:
            raise ValueError(f"mask: expected one channel (1, X, Y, Z), got shape {tuple(inside.shape)}")
        return _label_output(remove_voxels(labels, ~(inside > 0)), regions)


class RemoveSmallRegions(Transform):
    """Drop regions smaller than ``min_size`` and renumber the rest 1..K' in their original order.

    Args:
        min_size: the smallest size kept (a region of exactly ``min_size`` stays); default 320 mm^3, the bundle's
            (configs/inference.json ``min_region_mm3``, tuned on held-out phantoms: docs/results.md).
        unit: ``"voxel"`` or ``"mm3"`` (default); for mm^3 the voxel volume comes from ``spacing`` or, when that is
            None, from the MetaTensor's affine.
        spacing: voxel size in mm (one number or one per axis), overriding the affine.

    Input: (1, X, Y, Z) region label map. Output: same shape, int32.
    """

    def __init__(self, min_size: float = 320, unit: str = "mm3", spacing: float | Sequence[float] | None = None):
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        self.min_size = float(min_size)
        self.unit = look_up_option(unit, SIZE_UNITS)
        self.spacing = None if spacing is None else ensure_tuple_rep(spacing, 3)

    def voxel_volume(self, img: NdarrayOrTensor) -> float:
        if self.unit == "voxel":
            return 1.0
        if self.spacing is not None:
            return float(np.prod(self.spacing))
        affine = getattr(img, "affine", None)
        if affine is None:
            raise ValueError("min_size in mm3 needs the voxel spacing: pass `spacing` or a MetaTensor with an affine")
        return float(torch.prod(torch.as_tensor(affine_to_spacing(affine, r=3))))

    def __call__(self, regions: NdarrayOrTensor) -> NdarrayOrTensor:
        labels = _region_tensor(regions)
        volumes = region_sizes(labels).double() * self.voxel_volume(regions)
        return _label_output(keep_regions(labels, volumes >= self.min_size), regions)


class GreyErosiond(PerKeyd):
    """Dictionary form of :class:`GreyErosion`: ``keys`` name the anomaly map(s), eroded in place."""

    def __init__(
        self,
        keys: KeysCollection,
        radius: int | Sequence[int] = 1,
        structure: str = "ball",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = GreyErosion(radius, structure)


class GreyDilationd(PerKeyd):
    """Dictionary form of :class:`GreyDilation`: ``keys`` name the anomaly map(s), dilated in place."""

    def __init__(
        self,
        keys: KeysCollection,
        radius: int | Sequence[int] = 1,
        structure: str = "ball",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = GreyDilation(radius, structure)


class LabelRegionsd(PerKeyd):
    """Dictionary form of :class:`LabelRegions`: ``keys`` name the binary mask(s), replaced by region label maps."""

    def __init__(self, keys: KeysCollection, connectivity: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LabelRegions(connectivity)


class RemoveSmallRegionsd(PerKeyd):
    """Dictionary form of :class:`RemoveSmallRegions`: ``keys`` name the region label map(s)."""

    def __init__(
        self,
        keys: KeysCollection,
        min_size: float = 320,
        unit: str = "mm3",
        spacing: float | Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = RemoveSmallRegions(min_size, unit, spacing)


class RemoveTissueRegionsd(MapTransform):
    """Dictionary form of :class:`RemoveTissueRegions`.

    Args:
        keys: region label map(s), filtered in place.
        image_key: the input x' image (or the input label map) on the same grid.
        max_tissue_fraction: see :class:`RemoveTissueRegions`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        max_tissue_fraction: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.remover = RemoveTissueRegions(max_tissue_fraction)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remover(d[key], d[self.image_key])
        return d


class GrowRegionsd(MapTransform):
    """Dictionary form of :class:`GrowRegions`.

    Args:
        keys: region label map(s), grown in place.
        image_key: the input x' image (empty = 0).
        reconstruction_key: the stage-2 reconstruction G2 (one channel).
        tissue_threshold, steps, connectivity: see :class:`GrowRegions`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        reconstruction_key: str = "reconstruction",
        tissue_threshold: float = 0.45,
        steps: int = 4,
        connectivity: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.reconstruction_key = reconstruction_key
        self.grower = GrowRegions(tissue_threshold, steps, connectivity)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.grower(d[key], d[self.image_key], d[self.reconstruction_key])
        return d


class MaskRegionsd(MapTransform):
    """Dictionary form of :class:`MaskRegions`.

    Args:
        keys: region label map(s), clipped in place.
        mask_key: the mask on the same grid, e.g. ``"search_region"`` written by
            :class:`bundle.search_region.JawSearchRegiond` (named as in MONAI's ``MaskIntensityd``).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "search_region", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.masker = MaskRegions()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.masker(d[key], d[self.mask_key])
        return d


class RemoveSoftTissued(MapTransform):
    """Dictionary form of :class:`RemoveSoftTissue`.

    Args:
        keys: region label map(s), filtered in place.
        cbct_key: the raw CBCT on the same grid. When it is absent from the data and ``allow_missing_keys`` is True
            the transform does nothing (the CBCT is an optional input); absent otherwise raises ``KeyError``.
        window: soft-tissue intensity window, see :class:`RemoveSoftTissue`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        cbct_key: str = "cbct",
        window: Sequence[float] = DEFAULT_SOFT_TISSUE_WINDOW,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cbct_key = cbct_key
        self.remover = RemoveSoftTissue(window)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.cbct_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"key '{self.cbct_key}' (raw CBCT) is not in the data; set allow_missing_keys to skip")
        for key in self.key_iterator(d):
            d[key] = self.remover(d[key], d[self.cbct_key])
        return d
