"""Back to the input's grid one slab at a time: the inversion of the label preprocessing without a full-size grid.

Gap filled: MONAI's ``Invertd`` undoes ``Spacingd`` with ``SpatialResample``, which samples the whole output at once:
``torch.nn.functional.affine_grid`` builds a 4-channel base grid and then the 3-channel float32 sampling grid of
every output voxel (28 bytes per voxel, both alive together), and the result is float32 whatever the data. Back on a
600 x 600 x 416 input grid that is about 4 GB for each inverted key, the peak of the whole inference
(docs/memory.md). :func:`resample_slabwise` computes the same resampling one slab of output voxels (along the first
spatial axis) at a time, with MONAI's own arithmetic: the same normalised affine (``to_norm_affine``), the same base
grid values as ``affine_grid``, the same ``grid_sample`` call, so that every voxel is bit-identical to MONAI's
result; each slab is cast to the output dtype as it is made, so that a label map exists at full resolution only
once, as uint8 for instance. With nearest interpolation only the output box that can see a nonzero source voxel
is sampled (:func:`nonzero_output_box`), the rest is zero: a few wound regions go back to a 0.25 mm grid in the
time of their bounding box, not of the scan. :class:`SlabwiseInvert` / :class:`SlabwiseInvertd` are MONAI's
``Invert`` / ``Invertd`` with that resampling for ``Spacingd``; every other step (``Orientationd``, ...) is undone by
MONAI itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import USE_COMPILED, KeysCollection
from monai.data import MetaTensor
from monai.data.utils import AFFINE_TOL, to_affine_nd
from monai.networks.utils import to_norm_affine
from monai.transforms import Compose, InvertibleTransform, MapTransform, Spacingd, Transform
from monai.transforms.inverse import TraceableTransform
from monai.transforms.spatial.functional import spatial_resample
from monai.transforms.utils import convert_applied_interp_mode, resolves_modes
from monai.transforms.utils_pytorch_numpy_unification import allclose
from monai.utils import (
    TraceKeys,
    convert_to_dst_type,
    convert_to_numpy,
    convert_to_tensor,
    ensure_tuple,
    ensure_tuple_rep,
    fall_back_tuple,
    get_equivalent_dtype,
    get_torch_dtype_from_string,
)

# output voxels per slab: a slab's base grid, grid and float32 samples take 32 bytes per voxel (one channel), 128 MB
DEFAULT_SLAB_VOXELS = 4_000_000


def _linspace_from_neg_one(steps: int, align_corners: bool) -> torch.Tensor:
    """One axis of ``affine_grid``'s base grid, computed as ATen's ``linspace_from_neg_one`` does."""
    if steps <= 1:
        return torch.tensor(0.0)
    values = torch.linspace(-1, 1, steps)
    return values if align_corners else values * (steps - 1) / steps


def _check_range(values: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if dtype.is_floating_point or values.numel() == 0:
        return
    low, high = float(values.min()), float(values.max())
    info = torch.iinfo(dtype)
    if low < info.min or high > info.max or not torch.equal(values, torch.round(values)):
        raise ValueError(
            f"{name}: values {low:g}..{high:g} do not fit {str(dtype)[6:]} (integers {info.min}..{info.max})"
        )


def nonzero_output_box(
    src: torch.Tensor, xform: torch.Tensor, out_size: Sequence[int], padding_mode: str
) -> tuple[slice, slice, slice] | None:
    """The output voxels that nearest-neighbour sampling can take from a nonzero voxel of ``src``.

    Args:
        src: (C, X, Y, Z) source values.
        xform: 4x4 output voxel index -> source voxel index (``SpatialResample``'s ``xform``).
        out_size: the output's (X', Y', Z').
        padding_mode: ``grid_sample``'s; with ``"border"`` an output voxel outside the source takes an edge voxel.

    Returns one slice per output axis, the box of output voxels whose nearest source voxel may be nonzero (every
    voxel outside it samples a zero voxel or zero padding), an empty box when ``src`` is all zero, or None when the
    box cannot be bounded: nonzero voxels on the source's edge, with a padding that repeats the edge.
    """
    nonzero = src.ne(0).any(dim=0)
    if not bool(nonzero.any()):
        return (slice(0, 0),) * 3
    low, high = [], []
    for axis in range(3):
        present = torch.nonzero(nonzero.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        low.append(int(present[0]))
        high.append(int(present[-1]))
    on_edge = any(lo == 0 or hi == size - 1 for lo, hi, size in zip(low, high, nonzero.shape))
    if on_edge and padding_mode != "zeros":
        return None
    # nearest sampling takes voxel i for source coordinates in [i - 0.5, i + 0.5]: the source box's corners, mapped
    # back to output indices, bound every output voxel that reaches it; one voxel of margin absorbs rounding
    corners = np.stack(np.meshgrid(*zip(np.array(low) - 0.5, np.array(high) + 0.5), indexing="ij"), -1).reshape(-1, 3)
    inverse = np.linalg.inv(convert_to_numpy(xform).astype(np.float64))
    mapped = corners @ inverse[:3, :3].T + inverse[:3, 3]
    start = np.maximum(np.floor(mapped.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(mapped.max(axis=0)).astype(int) + 2, np.asarray(out_size, dtype=int))
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start, stop))


def resample_slabwise(
    img: MetaTensor,
    dst_affine: torch.Tensor | np.ndarray,
    spatial_size: Sequence[int] | torch.Tensor,
    mode: str = "nearest",
    padding_mode: str = "border",
    align_corners: bool = False,
    dtype: torch.dtype = torch.float32,
    output_dtype: torch.dtype | None = None,
    slab_voxels: int = DEFAULT_SLAB_VOXELS,
) -> MetaTensor:
    """MONAI's ``spatial_resample`` (eager, torch backend) computed one slab of the output at a time.

    Args:
        img: (C, X, Y, Z) MetaTensor with its affine (no pending lazy operations).
        dst_affine: 4x4 voxel -> world matrix of the output grid; ``spatial_size``: its (X', Y', Z').
        mode, padding_mode, align_corners: as ``SpatialResample``; ``"nearest"`` or ``"bilinear"`` here (a spline
            order or MONAI's compiled resampler goes to MONAI's ``spatial_resample`` unchanged).
        dtype: the computation dtype (``SpatialResample``'s ``dtype``; MONAI returns float32 whatever it is).
        output_dtype: dtype of the result, None for float32 as MONAI. An integer dtype needs nearest interpolation
            and values that fit it (checked on ``img``, since nearest interpolation only copies its values); otherwise
            ``ValueError``.
        slab_voxels: output voxels per slab (at least one (Y', Z') plane).

    Returns a (C, X', Y', Z') MetaTensor with ``img``'s meta data and the output affine, voxel for voxel equal to
    MONAI's ``SpatialResample`` output (cast to ``output_dtype``). Not traced (this is for inversion).
    """
    img = convert_to_tensor(img, track_meta=True)
    output_dtype = torch.float32 if output_dtype is None else get_equivalent_dtype(output_dtype, torch.Tensor)
    if not output_dtype.is_floating_point and mode != "nearest":
        raise ValueError(f"an integer output dtype ({output_dtype}) needs mode='nearest', got mode={mode!r}")
    _check_range(img.as_tensor().to(dtype), output_dtype, str(img.meta.get("filename_or_obj", "image")))
    in_spatial_size = list(img.shape[1:])
    supported = not img.pending_operations and img.ndim == 4 and not isinstance(mode, int) and not USE_COMPILED
    if supported:
        src_affine = to_affine_nd(3, img.affine).to(torch.float64)
        dst_affine = convert_to_dst_type(to_affine_nd(3, dst_affine), src_affine)[0]
        spatial_size = torch.tensor(fall_back_tuple(ensure_tuple(spatial_size)[:3], in_spatial_size, lambda x: x >= 0))
        xform = np.linalg.solve(convert_to_numpy(src_affine), convert_to_numpy(dst_affine))
        xform = torch.as_tensor(to_affine_nd(3, xform)).to(dtype=torch.float64)
        unchanged = allclose(spatial_size, torch.tensor(in_spatial_size)) and (
            allclose(src_affine, dst_affine, atol=AFFINE_TOL) or allclose(xform, np.eye(4), atol=AFFINE_TOL)
        )
        supported = not unchanged
    if not supported:  # MONAI's own path: no full-size grid in these cases (or nothing to save)
        out = spatial_resample(img, dst_affine, spatial_size, mode, padding_mode, align_corners, dtype, False, None)
        return out.to(output_dtype)

    meta = TraceableTransform.track_transform_meta(img, sp_size=spatial_size, affine=xform, transform_info=None)
    src = img.as_tensor().to(dtype).unsqueeze(0).contiguous()  # (1, C, X, Y, Z)
    _, interp, padding, _ = resolves_modes(mode, padding_mode)
    # monai.networks.layers.AffineTransform(normalized=False, reverse_indexing=True).forward, up to affine_grid
    theta = xform.to(src)[None].clone()
    dst_size = tuple(src.shape[:2]) + ensure_tuple(spatial_size)
    theta = to_norm_affine(theta, src.shape[2:], dst_size[2:], align_corners=align_corners, zero_centered=False)
    reverse = torch.as_tensor(range(2, -1, -1))
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    theta = theta[:, :3].transpose(1, 2)
    # affine_grid, one slab of the first output axis at a time: the base grid of ATen's affine_grid_generator
    size_x, size_y, size_z = (int(s) for s in dst_size[2:])
    axis_x, axis_y, axis_z = (_linspace_from_neg_one(s, align_corners) for s in (size_x, size_y, size_z))
    box = nonzero_output_box(src[0], xform, (size_x, size_y, size_z), padding) if interp == "nearest" else None
    if box is None:
        box = (slice(0, size_x), slice(0, size_y), slice(0, size_z))
        out = torch.empty((src.shape[1], size_x, size_y, size_z), dtype=output_dtype)
    else:  # calloc'd: the zeros outside the box cost no pass over the full grid
        out = torch.zeros((src.shape[1], size_x, size_y, size_z), dtype=output_dtype)
    box_x, box_y, box_z = box
    if size_x > 1:
        axis_x = axis_x[box_x]
    axis_y, axis_z = (axis[part] if axis.ndim else axis for axis, part in ((axis_y, box_y), (axis_z, box_z)))
    width_y, width_z = box_y.stop - box_y.start, box_z.stop - box_z.start
    step = max(1, min(box_x.stop - box_x.start, slab_voxels // max(1, width_y * width_z)))
    base = torch.empty((1, step, width_y, width_z, 4), dtype=src.dtype)  # the same z, y and 1 columns for every slab
    base[..., 0].copy_(axis_z)
    base[..., 1].copy_(axis_y.unsqueeze(-1) if axis_y.ndim else axis_y)
    base[..., 3].fill_(1)
    for start in range(box_x.start, box_x.stop, step):
        stop = min(start + step, box_x.stop)
        slab = base[:, : stop - start]
        part = slice(start - box_x.start, stop - box_x.start)
        slab[..., 2].copy_(axis_x[part].unsqueeze(-1).unsqueeze(-1) if size_x > 1 else axis_x)
        grid = slab.reshape(1, -1, 4).bmm(theta).view(1, stop - start, width_y, width_z, 3)
        sampled = F.grid_sample(src, grid, mode=interp, padding_mode=padding, align_corners=align_corners)
        out[:, start:stop, box_y, box_z] = sampled[0]
    result = MetaTensor(out)
    return result.copy_meta_from(meta)


class SlabwiseInvert(Transform):
    """MONAI's ``Invert`` for a dict-transform preprocessing, with ``Spacingd`` undone by :func:`resample_slabwise`.

    Args:
        transform: the preprocessing to undo (a ``Compose`` of dictionary transforms, as ``Invertd`` takes).
        orig_key: the key the preprocessing was applied to.
        nearest_interp: undo the spatial steps with nearest interpolation (``Invert``'s argument).
        dtype: dtype of the result; None: float32, as MONAI. An integer dtype (e.g. uint8 for a label map) is made
            slab by slab, without a float32 copy of the full volume; values must fit it (``ValueError`` otherwise).
        slab_voxels: output voxels per slab of :func:`resample_slabwise`.

    ``__call__(img)``: a MetaTensor on the preprocessed grid that carries the ``applied_operations`` (and meta data)
    of ``orig_key`` (``Invertd`` copies them, so does :class:`SlabwiseInvertd`). Returns it in the input's grid, equal
    to ``Invert``'s result (cast to ``dtype``).
    """

    def __init__(
        self,
        transform: InvertibleTransform,
        orig_key: str = "image",
        nearest_interp: bool = True,
        dtype: str | torch.dtype | None = None,
        slab_voxels: int = DEFAULT_SLAB_VOXELS,
    ) -> None:
        if not isinstance(transform, InvertibleTransform):
            raise ValueError("transform is not invertible, can't invert transform for the data.")
        self.transform = transform
        self.orig_key = orig_key
        self.nearest_interp = nearest_interp
        self.dtype = None if dtype is None else get_equivalent_dtype(dtype, torch.Tensor)
        self.slab_voxels = int(slab_voxels)

    def _undo_spacing(self, spacing: Spacingd, data: dict) -> dict:
        """``Spacingd.inverse`` (``SpatialResample.inverse``) with :func:`resample_slabwise`."""
        for key in spacing.key_iterator(data):
            resampler = spacing.spacing_transform.sp_resample
            record = resampler.pop_transform(data[key])  # checks the record belongs to this transform
            kwargs = dict(record[TraceKeys.EXTRA_INFO])
            align_corners = kwargs.get("align_corners")
            data[key] = resample_slabwise(
                data[key],
                dst_affine=kwargs["src_affine"],
                spatial_size=record[TraceKeys.ORIG_SIZE],
                mode=kwargs["mode"],
                padding_mode=kwargs["padding_mode"],
                align_corners=False if align_corners in (None, TraceKeys.NONE) else align_corners,
                dtype=get_torch_dtype_from_string(kwargs["dtype"]),
                output_dtype=self.dtype,
                slab_voxels=self.slab_voxels,
            )
        return data

    def __call__(self, img: MetaTensor) -> MetaTensor:
        if not isinstance(img, MetaTensor):
            raise ValueError(f"expected a MetaTensor carrying the applied operations, got {type(img).__name__}")
        img = img.detach()
        if self.nearest_interp:
            img.applied_operations = convert_applied_interp_mode(
                trans_info=img.applied_operations, mode="nearest", align_corners=None
            )
        data: dict[Hashable, Any] = {self.orig_key: img}
        del img  # each step below replaces the only reference, so a superseded volume is freed at once
        steps = self.transform.flatten().transforms if isinstance(self.transform, Compose) else [self.transform]
        invertible = [t for t in steps if isinstance(t, InvertibleTransform)]
        missing = [t for t in invertible if isinstance(t, MapTransform)]
        states = [t.allow_missing_keys for t in missing]
        try:
            for t in missing:  # as monai.transforms.allow_missing_keys_mode, for the steps of other keys
                t.allow_missing_keys = True
            for t in reversed(invertible):
                data = self._undo_spacing(t, data) if isinstance(t, Spacingd) else dict(t.inverse(data))
        finally:
            for t, state in zip(missing, states):
                t.allow_missing_keys = state
        out = data.pop(self.orig_key)
        if self.dtype is not None and out.dtype != self.dtype:
            _check_range(out.as_tensor(), self.dtype, self.orig_key)
            out = out.to(self.dtype)
        return out


class SlabwiseInvertd(MapTransform):
    """Dictionary form of :class:`SlabwiseInvert`: MONAI's ``Invertd`` (same first arguments) with the resampling
    back to the input's grid done slab by slab and the output dtype chosen per key.

    Args:
        keys: tensors on the preprocessed grid, replaced by their inverted versions.
        transform: the preprocessing to undo, as for ``Invertd``.
        orig_keys: per key, the key the preprocessing was applied to (its ``applied_operations`` and meta data are
            copied, as ``Invertd`` does); None: the keys themselves.
        nearest_interp: per key, as ``Invertd``.
        dtype: per key, the output dtype (None: float32, as ``Invertd``); see :class:`SlabwiseInvert`.
        slab_voxels: output voxels per slab.

    Unlike ``Invertd``: MetaTensor data only (no separate meta dictionaries), no ``device``/``post_func``/
    ``to_tensor``. A missing ``orig_key`` is skipped with a warning by ``Invertd``; here it raises ``KeyError``
    unless ``allow_missing_keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: InvertibleTransform,
        orig_keys: KeysCollection | None = None,
        nearest_interp: bool | Sequence[bool] = True,
        dtype: str | torch.dtype | None | Sequence[str | torch.dtype | None] = None,
        slab_voxels: int = DEFAULT_SLAB_VOXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        orig_keys = ensure_tuple_rep(orig_keys, len(self.keys)) if orig_keys is not None else self.keys
        nearest_interp = ensure_tuple_rep(nearest_interp, len(self.keys))
        dtypes = [dtype] * len(self.keys) if dtype is None or isinstance(dtype, (str, torch.dtype)) else dtype
        dtypes = ensure_tuple_rep(tuple(dtypes), len(self.keys))
        self.inverters = {
            key: SlabwiseInvert(transform, orig_key, nearest, dtype_, slab_voxels)
            for key, orig_key, nearest, dtype_ in zip(self.keys, orig_keys, nearest_interp, dtypes)
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            inverter = self.inverters[key]
            if inverter.orig_key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"'{inverter.orig_key}' (the preprocessed input of '{key}') is not in the data")
            source = d[inverter.orig_key]
            img = d.pop(key)
            img = img.detach().clone() if isinstance(img, MetaTensor) else MetaTensor(img)
            img.applied_operations = deepcopy(source.applied_operations)
            img.meta = deepcopy(source.meta)
            d[key] = inverter(img)
        return d
