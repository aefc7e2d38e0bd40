"""MONAI Deploy App SDK 4.0 application: one DentalSegmentator label map through this bundle, with the SDK's own
``MonaiBundleInferenceOperator``.

    LabelMapLoader --image--> BundleOperator --pred--> WoundLabelWriter
          '----------------------reference-----------------^

- ``LabelMapLoader`` reads the file with MONAI's ``LoadImage`` and emits an SDK ``Image`` carrying MONAI's metadata,
  affine included (the SDK's ``NiftiDataLoader`` passes a bare array, and the bundle's ``Spacingd`` and its
  inversion, ``SlabwiseInvertd``, need the geometry).
- ``BundleOperator`` is ``MonaiBundleInferenceOperator`` on the bundle folder (``configs/inference.json``:
  ``preprocessing``, ``inferer``, ``postprocessing``), with ``bundle_root`` and ``output_dir`` set to the bundle and
  the app's output folder before the transforms are built. The bundle's post-processing writes the case folder
  ``<output>/<case>/`` as the CLI does (float32 anomaly map, wound NIfTI and ``.seg.nrrd``, STL meshes, report) and
  leaves the wound label map, in the input's grid, as ``pred``: the SDK keeps only that first output and casts it to
  uint8, which a label map survives.
- ``WoundLabelWriter`` writes the ``pred`` it receives as ``<output>/wound_segmentation.nii.gz`` in the input's
  geometry (the SDK attaches the 2 mm model grid's metadata to it; the loader's reference has the input's).

Run (in the environment of scripts/deploy_app/requirements.txt, see docs/deployment.md)::

    .venv-deploy/bin/python scripts/deploy_app/app.py -i labels.nii.gz -o out [-m /path/to/bundle]

``-m`` (or ``HOLOSCAN_MODEL_PATH``) is the bundle folder; without it, the bundle this script belongs to. A failure
ends in one line on stderr naming the file and the problem, exit status 2, as ``python -m bundle`` does.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "inference.json").is_file()


# the bundle: HOLOSCAN_MODEL_PATH inside a MAP (where the packager puts it), else the bundle this script belongs to;
# its folder goes on sys.path for the `bundle` package, which the app and the bundle's configs import
ROOT = Path(__file__).resolve().parents[2]
if _is_bundle(Path(os.environ.get("HOLOSCAN_MODEL_PATH", "/nonexistent"))):
    ROOT = Path(os.environ["HOLOSCAN_MODEL_PATH"]).resolve()
sys.path.insert(0, str(ROOT))

from holoscan.conditions import CountCondition  # noqa: E402
from monai.data import NibabelWriter  # noqa: E402
from monai.deploy.core import Application, Image, IOType, Operator, OperatorSpec  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import (  # noqa: E402
    IOMapping,
    MonaiBundleInferenceOperator,
)
from monai.transforms import LoadImage  # noqa: E402

from bundle.errors import innermost  # noqa: E402
from bundle.weights import verify_checksum  # noqa: E402

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def label_map_path(input_path: Path) -> Path:
    """The input file itself, or the single label map in an input folder."""
    if input_path.is_file():
        return input_path
    if not input_path.is_dir():
        raise FileNotFoundError(f"{input_path}: input not found")
    found = sorted(p for p in input_path.iterdir() if p.name.lower().endswith(LABEL_MAP_SUFFIXES))
    if len(found) != 1:
        raise ValueError(
            f"{input_path}: expected exactly one label map ({', '.join(LABEL_MAP_SUFFIXES)}), found {len(found)}"
        )
    return found[0]


class LabelMapLoader(Operator):
    """Emits the label map as an ``Image`` with MONAI's metadata, on ``image`` (for the bundle) and ``reference``."""

    def __init__(self, fragment, *args, path: Path, **kwargs):
        self.path = path
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("image")
        spec.output("reference")

    def compute(self, op_input, op_output, context):
        volume = LoadImage(image_only=True)(str(self.path))
        meta = {**volume.meta, "affine": volume.affine.numpy(), "original_channel_dim": "no_channel"}
        image = Image(volume.numpy(), metadata=meta)
        op_output.emit(image, "image")
        op_output.emit(image, "reference")


class BundleOperator(MonaiBundleInferenceOperator):
    """``MonaiBundleInferenceOperator`` with config ids overridden (``overrides``) before any transform is built."""

    def __init__(self, fragment, *args, overrides: dict, **kwargs):
        self._overrides = dict(overrides)
        super().__init__(fragment, *args, **kwargs)

    def _get_compose(self, obj_name, disallowed_prefixes):
        # once, before the first compose: updating the parser later would rebuild the pre-processing transforms,
        # and the inversion (SlabwiseInvertd) in the post-processing must invert the very instances that ran
        if self._overrides:
            self._parser.update(self._overrides)
            self._overrides = {}
        return super()._get_compose(obj_name, disallowed_prefixes)


class WoundLabelWriter(Operator):
    """Writes ``pred`` (the SDK's (D, H, W) uint8 ``Image``) as a NIfTI in the geometry of ``reference``."""

    def __init__(self, fragment, *args, output_file: Path, **kwargs):
        self.output_file = output_file
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred")
        spec.input("reference")

    def compute(self, op_input, op_output, context):
        labels = np.swapaxes(op_input.receive("pred").asnumpy(), 0, 2)  # the SDK's (D, H, W) back to (W, H, D)
        reference = op_input.receive("reference")
        if labels.shape != reference.asnumpy().shape:
            raise ValueError(f"wound labels of shape {labels.shape} do not match the input {reference.asnumpy().shape}")
        affine = reference.metadata()["affine"]
        writer = NibabelWriter(output_dtype=np.uint8)
        writer.set_data_array(labels, channel_dim=None)
        # the labels are on the input's grid already; set_metadata(resample=False) would still resample, and fails on
        # inputs stored with permuted axes (see bundle/outputs.py:write_nifti)
        writer.affine = np.asarray(affine, dtype=np.float64)
        writer.write(str(self.output_file))
        logging.info("%s: %d wound region(s)", self.output_file, len(np.unique(labels)) - 1)


class WoundSegmentationApp(Application):
    def compose(self):
        context = Application.init_app_context(self.argv)
        model_path = Path(context.model_path)
        bundle = model_path.resolve() if _is_bundle(model_path) else ROOT
        verify_checksum(bundle / "models" / "model.pt")  # the SDK loads the weights without the bundle's check
        context.models = None  # the operator then loads the bundle folder itself (bundle_path)
        output = Path(context.output_path).resolve()
        loader = LabelMapLoader(
            self, CountCondition(self, 1), path=label_map_path(Path(context.input_path)), name="loader"
        )
        inference = BundleOperator(
            self,
            app_context=context,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_path=bundle,
            overrides={"bundle_root": str(bundle), "output_dir": str(output)},
            name="bundle",
        )
        writer = WoundLabelWriter(self, output_file=output / "wound_segmentation.nii.gz", name="writer")
        self.add_flow(loader, inference, {("image", "image")})
        self.add_flow(loader, writer, {("reference", "reference")})
        self.add_flow(inference, writer, {("pred", "pred")})


def requested_output(argv: list[str]) -> Path:
    """The output folder the SDK will use (``-o``/``--output``, else ``HOLOSCAN_OUTPUT_PATH``, else ``output``); the
    SDK creates it while parsing the arguments, so a failed run must know whether it was there before."""
    for index, argument in enumerate(argv[:-1]):
        if argument in ("-o", "--output"):
            return Path(argv[index + 1]).resolve()
    return Path(os.environ.get("HOLOSCAN_OUTPUT_PATH", "output")).resolve()


def main() -> int:
    output = requested_output(sys.argv)
    output_existed = output.exists()
    try:
        WoundSegmentationApp().run()
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and status 2
        cause = innermost(error)
        print(f"error: {type(cause).__name__}: {cause}", file=sys.stderr)
        if not output_existed and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # a failed run leaves nothing behind
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
