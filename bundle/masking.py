"""Stage-2 masking shaped like bone loss: random smooth blobs of tissue set to 0.

Gap it fills: MONAI's ``RandCoarseDropout`` drops axis-aligned boxes placed anywhere in the patch. A stage-2 encoder
trained only on boxes (and on the paper's teeth masking) learns to fill holes with flat faces, but leaves rounded,
irregular defects, as osteonecrosis produces, largely as they are. This transform removes tissue inside random
ellipsoids with a low-frequency rough surface, centred on tissue, so that the encoder also learns to restore those.
It is a third masking beside the paper's two (``configs/train_stage2.json``, ``blob_weight``; 0 gives the paper's).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor, look_up_option
from monai.utils.type_conversion import convert_to_dst_type

# The surface noise is a random grid of this many nodes per axis, interpolated over the patch: a few bumps per blob.
_NOISE_NODES = 5
_RADIUS_DISTRIBUTIONS = ("uniform", "log_uniform")


class RandTissueBlobDropout(RandomizableTransform):
    """Set to 0, in every channel, the voxels inside 1..``max_blobs`` random rough ellipsoids centred on tissue.

    Each blob: a centre drawn uniformly among the voxels above ``min_centre_value`` (in any channel; none drawn when
    there are none), one radius per axis drawn from [``min_radius``, ``max_radius``] voxels (uniformly, or
    log-uniformly with ``radius_distribution="log_uniform"``), and the surface
    ``sum(((p - centre) / radius)^2) + roughness * noise(p) <= 1``, with ``noise`` a smooth random field in [-1, 1].

    Args:
        prob: probability of masking at all.
        max_blobs: most blobs per call (at least 1 when masking).
        min_radius, max_radius: radius range per axis, in voxels.
        roughness: amplitude of the surface noise (0: plain ellipsoids).
        min_centre_value: centres lie only on voxels above this value. 0: any tissue. In x' (mandible 0.7,
            upper teeth 0.8, lower teeth 0.9, canal 1.0, upper skull 0.6), 0.65 keeps them in the jaw, where
            osteonecrosis lies; the blobs still reach the maxillary alveolar process around the upper teeth.
        radius_distribution: ``"uniform"`` or ``"log_uniform"``. Log-uniform draws as many radii in [2, 4] as in
            [8, 16]: small defects (about 1 cm^3 at 2 mm, radius 3 voxels) are trained as often as large ones
            without narrowing the range, which a smaller ``max_radius`` would do at the cost of the large removals.
    """

    def __init__(
        self,
        prob: float = 1.0,
        max_blobs: int = 2,
        min_radius: float = 2.0,
        max_radius: float = 8.0,
        roughness: float = 0.5,
        min_centre_value: float = 0.0,
        radius_distribution: str = "uniform",
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if max_blobs < 1:
            raise ValueError(f"max_blobs must be >= 1, got {max_blobs}")
        if not 0 < min_radius <= max_radius:
            raise ValueError(f"need 0 < min_radius <= max_radius, got {min_radius} and {max_radius}")
        if roughness < 0:
            raise ValueError(f"roughness must be >= 0, got {roughness}")
        if min_centre_value < 0:
            raise ValueError(f"min_centre_value must be >= 0, got {min_centre_value}")
        self.radius_distribution = look_up_option(radius_distribution, _RADIUS_DISTRIBUTIONS)
        self.min_centre_value = float(min_centre_value)
        self.max_blobs = max_blobs
        self.min_radius, self.max_radius = float(min_radius), float(max_radius)
        self.roughness = float(roughness)
        self._blobs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def randomize(self, centre_candidates: torch.Tensor) -> None:  # type: ignore[override]
        """Draw the blobs for a (X, Y, Z) bool mask of the voxels that may hold a centre: (centre, radii, noise
        nodes) each."""
        super().randomize(None)
        self._blobs = []
        if not self._do_transform:
            return
        candidates = torch.nonzero(centre_candidates)
        if len(candidates) == 0:
            return
        for _ in range(self.R.randint(1, self.max_blobs + 1)):
            centre = candidates[self.R.randint(len(candidates))].numpy().astype(np.float32)
            radii = self._draw_radii()
            nodes = self.R.uniform(-1.0, 1.0, size=(_NOISE_NODES,) * 3).astype(np.float32)
            self._blobs.append((centre, radii, nodes))

    def _draw_radii(self) -> np.ndarray:
        if self.radius_distribution == "log_uniform":
            return np.exp(self.R.uniform(np.log(self.min_radius), np.log(self.max_radius), size=3)).astype(np.float32)
        return self.R.uniform(self.min_radius, self.max_radius, size=3).astype(np.float32)

    def mask(self, spatial_shape: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        """(X, Y, Z) bool: the voxels inside the blobs drawn by the last :meth:`randomize`."""
        inside = torch.zeros(tuple(spatial_shape), dtype=torch.bool, device=device)
        axes = [torch.arange(n, dtype=torch.float32, device=device) for n in spatial_shape]
        for centre, radii, nodes in self._blobs:
            level = sum(
                ((axis - float(c)) / float(r)).reshape([-1 if i == d else 1 for i in range(3)]) ** 2
                for d, (axis, c, r) in enumerate(zip(axes, centre, radii))
            )
            if self.roughness > 0:
                noise = F.interpolate(
                    torch.from_numpy(nodes).to(device)[None, None],
                    size=tuple(spatial_shape),
                    mode="trilinear",
                    align_corners=True,
                )[0, 0]
                level = level + self.roughness * noise
            inside |= level <= 1.0
        return inside

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """``img`` (C, X, Y, Z), tissue > 0 -> the same with the blobs' voxels set to 0."""
        image = convert_to_tensor(img, track_meta=False)
        if image.ndim != 4:
            raise ValueError(f"expected a (C, X, Y, Z) image, got shape {list(image.shape)}")
        if randomize:
            self.randomize((image > self.min_centre_value).any(dim=0).cpu())
        if not self._blobs:
            return img
        masked = image.masked_fill(self.mask(image.shape[1:], image.device)[None], 0)
        return convert_to_dst_type(masked, img)[0]


class RandTissueBlobDropoutd(RandomizableTransform, MapTransform):
    """Dictionary form of :class:`RandTissueBlobDropout`: one draw per call (from the first key), the same blobs
    removed from every key."""

    backend = RandTissueBlobDropout.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        max_blobs: int = 2,
        min_radius: float = 2.0,
        max_radius: float = 8.0,
        roughness: float = 0.5,
        min_centre_value: float = 0.0,
        radius_distribution: str = "uniform",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.dropper = RandTissueBlobDropout(
            prob, max_blobs, min_radius, max_radius, roughness, min_centre_value, radius_distribution
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.dropper.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            d[key] = self.dropper(d[key], randomize=first)
            first = False
        return d
