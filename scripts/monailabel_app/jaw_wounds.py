"""MONAI Label inference task for this bundle: MONAI Label 0.8.5's ``BundleInferTask`` with two adjustments.

- MONAI Label puts the request's file name in the data under ``image_path`` (a string); MONAI 1.6.1's ``Spacingd``
  updates every data entry whose key starts with ``image_`` as a metadata dictionary, so the bundle's pre-processing
  would fail with ``'str' object has no attribute 'update'``. The entry is set aside while the pre-transforms run.
- The bundle's post-processing writes the case folder (float anomaly map, Slicer segmentation, STL meshes, report);
  here it goes to ``output_dir`` (default ``<bundle>/outputs/monailabel``), replacing an earlier result of the same
  case. MONAI Label itself returns the wound label map the post-processing leaves under ``pred``, as one label,
  ``wound`` = 1 (the labels MONAI Label would take from ``network_data_format`` name the network's three channels,
  not regions; the regions stay apart in the case folder).

The weights' sha256 is checked before MONAI Label loads them (it loads ``models/model.pt`` without a check).
"""

from __future__ import annotations

import sys
from pathlib import Path

from monai.transforms import AsDiscreted
from monailabel.tasks.infer.bundle import BundleInferTask


class JawWoundInferTask(BundleInferTask):
    def __init__(self, bundle_path: str, conf: dict | None = None, output_dir: str | None = None, **kwargs):
        sys.path.insert(0, bundle_path)
        from bundle.weights import verify_checksum

        verify_checksum(Path(bundle_path) / "models" / "model.pt")
        super().__init__(bundle_path, conf or {}, **kwargs)
        self.bundle_config["output_dir"] = output_dir or str(Path(bundle_path) / "outputs" / "monailabel")
        self.bundle_config["overwrite"] = True
        Path(self.bundle_config["output_dir"]).mkdir(parents=True, exist_ok=True)
        self.labels = {"wound": 1}

    def post_transforms(self, data=None):
        return super().post_transforms(data) + [AsDiscreted(keys=self.key_pred, threshold=0.5)]

    def run_pre_transforms(self, data, transforms):
        image_path = data.pop("image_path", None)
        data = super().run_pre_transforms(data, transforms)
        if image_path is not None:
            data["image_path"] = image_path
        return data
