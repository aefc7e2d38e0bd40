"""Split packaged inference weights back into the two stage-1-style checkpoints that stage 2 starts from, so that
stage 2 can be fine-tuned from the shipped (or a model zoo) ``models/model.pt`` instead of from a stage-1 run.

    python scripts/unpack_model.py --output_dir runs/finetune
    python -m monai.bundle run training \\
        --config_file "['configs/train.json','configs/train_stage2.json','configs/train_cpu.json']" ... \\
        --stage1_checkpoint runs/finetune/stage2_start.pt \\
        --stage1_reconstruction_target#stage1_checkpoint runs/finetune/stage1.pt

The inverse of ``scripts/package_model.py``. Gap it fills: the packaged weights hold only the detector
(``bundle.networks.AnomalyDetector``: two encoders, one codebook and decoder), while ``bundle.trainer.init_stage2``
and ``bundle.stage2_target.Stage1ReconstructionTarget`` read the ``"generator"`` and ``"discriminator"`` entries of
a training checkpoint. It writes, in ``--output_dir``:

- ``stage1.pt``: the stage-1 generator (``encoder1``, codebook, decoder), the frozen target of stage 2;
- ``stage2_start.pt``: the stage-2 generator (``encoder2``, the same codebook and decoder), where the fine-tune starts.

Both carry the same freshly initialised discriminator (``discriminator_def`` of ``--config_file``: the packaged
weights keep none), built after the training generator under ``torch.manual_seed(--seed)`` (default 0, the
training configs' ``seed``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.networks import AnomalyDetector  # noqa: E402
from bundle.weights import load_verified_weights  # noqa: E402

TRAINING_CONFIGS = ["configs/train.json", "configs/train_stage2.json", "configs/train_cpu.json"]
OUTPUT_NAMES = {"encoder1": "stage1.pt", "encoder2": "stage2_start.pt"}


def unpack(
    weights: Path, output_dir: Path, config_files: list[str], seed: int = 0, overwrite: bool = False
) -> list[Path]:
    """Write ``stage1.pt`` and ``stage2_start.pt`` (see the module docstring) and return their paths.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is False (nothing is written).
        FileNotFoundError / ValueError: ``weights`` is missing, fails its checksum or does not fit the generator.
    """
    outputs = [output_dir / name for name in OUTPUT_NAMES.values()]
    existing = [str(path) for path in outputs if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)}: exists; pass --overwrite to replace")
    parser = ConfigParser()
    parser.read_config([str(ROOT / name) for name in config_files])  # an absolute name stays as it is
    parser["bundle_root"] = str(ROOT)
    torch.manual_seed(seed)
    generator = parser.get_parsed_content("network_def")
    discriminator = parser.get_parsed_content("discriminator_def")
    detector = AnomalyDetector(generator)
    try:
        load_verified_weights(detector, weights)
    except RuntimeError as error:  # load_state_dict: missing, unexpected or misshapen entries
        raise ValueError(f"{weights}: does not fit the generator of {config_files} ({error})") from None
    generator.quantizer.load_state_dict(detector.quantizer.state_dict())
    generator.decoder.load_state_dict(detector.decoder.state_dict())
    output_dir.mkdir(parents=True, exist_ok=True)
    temporaries = []
    try:
        for encoder in OUTPUT_NAMES:
            generator.encoder.load_state_dict(getattr(detector, encoder).state_dict())
            handle, temporary = tempfile.mkstemp(prefix=".unpack.", dir=output_dir)
            os.close(handle)
            temporaries.append(temporary)
            torch.save({"generator": generator.state_dict(), "discriminator": discriminator.state_dict()}, temporary)
        for temporary, output in zip(temporaries, outputs):
            os.replace(temporary, output)
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "model.pt", help="packaged detector weights")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument(
        "--config_file",
        nargs="+",
        default=TRAINING_CONFIGS,
        help="the training configs of the fine-tune (network_def, discriminator_def); relative to the bundle root",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh discriminator")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    try:
        outputs = unpack(args.weights, args.output_dir, args.config_file, args.seed, args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"unpack_model.py: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
