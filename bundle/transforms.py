"""Input transforms of the bundle: label-map validation and remapping, the x' intensity mapping (eq. 12) and the
teeth masking of stage 2 (eqs. 13-15).

MONAI has no transform that checks a segmentation is a valid label map of a given convention, maps label values to
the paper's intensities, or builds the dilated teeth mask; everything else in the chains (loading, orientation,
spacing, cropping, random cube masking) is MONAI's own and is composed in ``configs/``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import LoadImaged, MapTransform, Transform
from monai.utils import convert_to_tensor, look_up_option
from monai.utils.type_conversion import convert_to_dst_type

from bundle.errors import innermost

DENTALSEGMENTATOR_LABELS = {0: "other", 1: "upper skull", 2: "mandible", 3: "upper teeth", 4: "lower teeth", 5: "canal"}
NUM_DENTALSEGMENTATOR_LABELS = len(DENTALSEGMENTATOR_LABELS)


def _toothfairy2_lookup() -> torch.Tensor:
    """ToothFairy2 -> DentalSegmentator: 1 lower jawbone -> 2, 2 upper jawbone -> 1, 3-4 canals -> 5,
    11-28 upper teeth (FDI) -> 3, 31-48 lower teeth (FDI) -> 4, every other label (pulp, implants, ...) -> 0."""
    lookup = torch.zeros(256, dtype=torch.uint8)
    lookup[1], lookup[2], lookup[3:5] = 2, 1, 5
    lookup[11:29] = 3
    lookup[31:49] = 4
    return lookup


REMAP_PRESETS: dict[str, torch.Tensor | None] = {
    "dentalsegmentator": None,  # the bundle's own convention: values are checked, not changed
    "toothfairy2": _toothfairy2_lookup(),
}


def source_name(img: NdarrayOrTensor) -> str:
    """The file an image was loaded from, for error messages (MONAI keeps it in the MetaTensor's meta)."""
    meta = getattr(img, "meta", {})
    return str(meta.get("filename_or_obj", "<array>"))


def check_nifti_geometry(path: str | os.PathLike) -> None:
    """Refuse a NIfTI file whose header geometry is broken: an sform (used when its code is set) that is singular or
    not finite, or, without an sform, voxel sizes (``pixdim``) that are zero, negative or not finite.

    MONAI's NIfTI reader repairs such headers silently (``correct_nifti_header_if_necessary`` rebuilds the affine
    from ``pixdim``), so the geometry of the outputs would be a guess. Other formats, and files whose header cannot be
    read (the reader reports those), pass. Raises ``ValueError`` naming the file.
    """
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return
    try:  # the header as stored: nibabel's own load also repairs it (a negative pixdim becomes its absolute value)
        with nib.openers.ImageOpener(path) as stream:
            header = nib.Nifti1Header.from_fileobj(stream, check=False)
            if int(header["sizeof_hdr"]) != 348:
                stream.seek(0)
                header = nib.Nifti2Header.from_fileobj(stream, check=False)
    except Exception:  # noqa: BLE001 - an unreadable file is the reader's to report, with its own message
        return
    if int(header["sform_code"]) > 0:
        sform = header.get_sform()
        if not np.isfinite(sform).all() or abs(np.linalg.det(sform[:3, :3])) < 1e-12:
            raise ValueError(f"{path}: the NIfTI sform (voxel -> world) is singular or not finite")
    elif int(header["qform_code"]) > 0:
        sizes = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        if not np.isfinite(sizes).all() or (sizes <= 0).any():
            raise ValueError(f"{path}: the NIfTI voxel size (pixdim {sizes.tolist()}) is not a positive number")


class LoadImageWithFileErrorsd(LoadImaged):
    """MONAI's ``LoadImaged`` (same arguments) whose read failures name the file, and which refuses a NIfTI header
    geometry that MONAI's reader would repair silently (:func:`check_nifti_geometry`).

    Gap filled: a reader's own error does not always say which file failed (a truncated ``.nii.gz`` ends in
    ``EOFError: Compressed file ended before the end-of-stream marker was reached``); here such an error becomes
    ``ValueError: <file>: cannot read the file (<original error>)``. Errors that already name the file pass unchanged.
    """

    def __call__(self, data, reader=None):
        for key in self.key_iterator(dict(data)):
            if isinstance(data[key], (str, os.PathLike)):
                check_nifti_geometry(data[key])
        try:
            return super().__call__(data, reader)
        except Exception as error:
            cause = innermost(error)
            files = [
                str(data[key]) for key in self.key_iterator(dict(data)) if isinstance(data[key], (str, os.PathLike))
            ]
            if not files or any(file in str(cause) for file in files):
                raise
            # from None: this message is the one to report, the reader's error is quoted in it
            raise ValueError(f"{', '.join(files)}: cannot read the file ({type(cause).__name__}: {cause})") from None


class PerKeyd(MapTransform):
    """Dictionary wrapper that applies the array transform ``self.transform`` to each key in place; subclasses set
    ``self.transform`` in their constructor (MONAI writes this loop out in every dict transform)."""

    transform: Transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class ValidateLabels(Transform):
    """Check that an image is a 3D integer label map with at least one nonzero voxel and map it to the
    DentalSegmentator convention (0 other, 1 upper skull, 2 mandible, 3 upper teeth, 4 lower teeth, 5 canal).

    Place it right after ``LoadImage`` (before channel handling), so that a 2D or 4D file is reported as such instead
    of failing later inside a spatial transform.

    Args:
        remap_preset: ``None`` or ``"dentalsegmentator"`` accept labels 0..5 unchanged and reject anything else;
            ``"toothfairy2"`` maps the ToothFairy2 labels (see ``_toothfairy2_lookup``).
        spacing_range_mm: voxel sizes accepted, read from a MetaTensor's affine (column norms). A header with zero
            spacing and no qform/sform, or an affine in metres or micrometres, gives sizes outside it; an affine that
            is singular or not finite is refused as well, and so is a NIfTI header with neither qform nor sform
            (nibabel then replaces a zero spacing by 1 mm, so the geometry is a guess). Plain arrays (no affine)
            are not checked.

    Input: array of shape (X, Y, Z), any numeric dtype. Output: same shape and type, values in 0..5.
    Raises ``ValueError`` naming the source file and the problem.
    """

    def __init__(self, remap_preset: str | None = None, spacing_range_mm: tuple[float, float] = (0.05, 5.0)) -> None:
        self.remap_preset = "dentalsegmentator" if remap_preset is None else remap_preset
        self.lookup = look_up_option(self.remap_preset, REMAP_PRESETS)
        self.spacing_range_mm = spacing_range_mm

    def _check_geometry(self, img: NdarrayOrTensor, name: str) -> None:
        affine = getattr(img, "affine", None)
        if affine is None:
            return
        meta = getattr(img, "meta", {})
        if "qform_code" in meta and "sform_code" in meta and int(meta["qform_code"]) == int(meta["sform_code"]) == 0:
            raise ValueError(
                f"{name}: the NIfTI header has neither a qform nor an sform, so the voxel size and orientation are "
                "unknown; write the label map with its scan's geometry"
            )
        matrix = convert_to_tensor(affine, track_meta=False, dtype=torch.float64)
        if not torch.isfinite(matrix).all():
            raise ValueError(f"{name}: the image's affine (voxel -> world) has non-finite values")
        spacing = torch.linalg.norm(matrix[:3, :3], dim=0)
        low, high = self.spacing_range_mm
        if torch.linalg.det(matrix[:3, :3]).abs() < 1e-12 or (spacing < low).any() or (spacing > high).any():
            sizes = ", ".join(f"{v:.4g}" for v in spacing.tolist())
            raise ValueError(
                f"{name}: voxel size ({sizes}) mm is outside {low}-{high} mm or the affine is singular "
                "(a header without valid spacing or qform/sform?)"
            )

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        name = source_name(img)
        labels = convert_to_tensor(img, track_meta=False)
        if labels.ndim != 3:
            raise ValueError(f"{name}: expected a 3D label map, got an image of shape {tuple(labels.shape)}")
        self._check_geometry(img, name)
        if labels.is_floating_point() and not torch.equal(labels, torch.round(labels)):
            raise ValueError(
                f"{name}: label map has non-integer values (is it an intensity image, not a segmentation?)"
            )
        low, high = int(labels.min()), int(labels.max())
        if high == 0 and low == 0:
            raise ValueError(f"{name}: label map is empty (all voxels are 0)")
        if low < 0:
            raise ValueError(f"{name}: label map has negative labels (minimum {low})")
        if self.lookup is None:
            if high >= NUM_DENTALSEGMENTATOR_LABELS:
                outside = torch.unique(labels[labels >= NUM_DENTALSEGMENTATOR_LABELS]).long().tolist()
                raise ValueError(
                    f"{name}: labels {outside[:10]} are outside 0..{NUM_DENTALSEGMENTATOR_LABELS - 1} "
                    "(DentalSegmentator convention); pass a remap preset (e.g. 'toothfairy2') for other datasets"
                )
            return img
        if high >= len(self.lookup):
            raise ValueError(f"{name}: label {high} exceeds the '{self.remap_preset}' preset's range")
        remapped = self.lookup[labels.to(torch.long)]
        if not remapped.any():
            raise ValueError(f"{name}: no '{self.remap_preset}' label of the jaw is present after remapping")
        out, *_ = convert_to_dst_type(remapped, img, dtype=labels.dtype)
        return out


class ValidateLabelsd(PerKeyd):
    """Dictionary form of :class:`ValidateLabels`."""

    def __init__(
        self,
        keys: KeysCollection,
        remap_preset: str | None = None,
        spacing_range_mm: tuple[float, float] = (0.05, 5.0),
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = ValidateLabels(remap_preset, spacing_range_mm)


def _world_box(image: NdarrayOrTensor) -> torch.Tensor:
    """(2, 3) min and max world corner (mm) of a channel-first image's voxel grid, from its affine."""
    shape = torch.tensor(image.shape[1:], dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, float(size) - 1.0]) for size in shape.tolist()])
    affine = convert_to_tensor(image.affine, track_meta=False, dtype=torch.float64)
    world = corners.to(torch.float64) @ affine[:3, :3].T + affine[:3, 3]
    return torch.stack([world.min(dim=0).values, world.max(dim=0).values])


class ValidateCBCTd(MapTransform):
    """Refuse a raw CBCT that cannot serve the label map it comes with: NaN or infinite grey values, or a grid that
    does not overlap the label map's in world space (a CBCT of another scan, or a wrong affine).

    Gap filled: ``ResampleToMatchd`` resamples whatever it gets (border padding turns a CBCT that lies elsewhere into a
    plausible-looking constant volume); the error names the CBCT file. Place it before ``ResampleToMatchd``.

    Args:
        keys: the CBCT key(s), channel-first MetaTensors with an affine.
        reference_key: the label map's key (any grid: only its world extent is used).
    """

    def __init__(self, keys: KeysCollection, reference_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            cbct, name = d[key], source_name(d[key])
            if not torch.isfinite(convert_to_tensor(cbct, track_meta=False)).all():
                raise ValueError(f"{name}: the CBCT holds NaN or infinite values")
            mine, theirs = _world_box(cbct), _world_box(d[self.reference_key])
            if (mine[0] > theirs[1]).any() or (theirs[0] > mine[1]).any():
                raise ValueError(
                    f"{name}: the CBCT does not overlap its label map in world space (CBCT "
                    f"{mine[0].round().tolist()}-{mine[1].round().tolist()} mm, label map "
                    f"{theirs[0].round().tolist()}-{theirs[1].round().tolist()} mm): another scan, or a wrong affine?"
                )
        return d


class LabelToIntensity(Transform):
    """Eq. 12: x' = (label + 5) / 10 for nonzero labels and 0 elsewhere (1 -> 0.6, ..., 5 -> 1.0), as float32.

    The spread of nonzero labels over [0.6, 1.0], away from background 0, is what lets a one-channel VQ-GAN
    converge where a one-hot map does not (paper, section 3.4).
    """

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        labels = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        intensity = torch.where(labels > 0, (labels + 5.0) / 10.0, torch.zeros((), dtype=torch.float32))
        out, *_ = convert_to_dst_type(intensity, img, dtype=torch.float32)
        return out


class LabelToIntensityd(PerKeyd):
    """Dictionary form of :class:`LabelToIntensity`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = LabelToIntensity()


def teeth_mask(intensity: torch.Tensor, threshold: float = 0.75, kernel_size: int = 5) -> torch.Tensor:
    """Eqs. 13-14: M = MaxPool3d(x' > threshold, kernel_size, stride 1, same padding), a float 0/1 mask.

    With the default threshold M covers upper teeth, lower teeth and canal (x' = 0.8, 0.9, 1.0), dilated by
    ``kernel_size // 2`` voxels. ``intensity`` is channel-first (C, X, Y, Z) or batched (B, C, X, Y, Z).
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd to keep the mask centred, got {kernel_size}")
    seeds = (intensity > threshold).to(torch.float32)
    batched = seeds if seeds.ndim == 5 else seeds.unsqueeze(0)
    dilated = F.max_pool3d(batched, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
    return dilated if seeds.ndim == 5 else dilated.squeeze(0)


class MaskTeeth(Transform):
    """Eq. 15: x' * (1 - M), blanking the teeth, the canal and a ``kernel_size // 2`` voxel margin around them, so
    that the stage-2 encoder learns to restore teeth and alveolar bone a healthy jaw would have.

    Input and output: float tensor (C, X, Y, Z), values in [0, 1].
    """

    def __init__(self, threshold: float = 0.75, kernel_size: int = 5) -> None:
        self.threshold = threshold
        self.kernel_size = kernel_size

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        intensity = convert_to_tensor(img, track_meta=False)
        masked = intensity * (1.0 - teeth_mask(intensity, self.threshold, self.kernel_size))
        out, *_ = convert_to_dst_type(masked, img)
        return out


class MaskTeethd(PerKeyd):
    """Dictionary form of :class:`MaskTeeth`."""

    def __init__(
        self, keys: KeysCollection, threshold: float = 0.75, kernel_size: int = 5, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = MaskTeeth(threshold, kernel_size)
