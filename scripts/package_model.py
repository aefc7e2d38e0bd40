"""Combine a stage-1 and a stage-2 training checkpoint into the inference weights ``models/model.pt``.

The result is the state dict of ``bundle.networks.AnomalyDetector`` (stage-1 encoder, stage-2 encoder, shared
codebook and decoder) built from ``configs/inference.json#generator_def``, with its sha256 recorded beside it in
``model.pt.sha256`` (and, when the output is the bundle's own ``models/model.pt``, in ``large_files.yml``, which the
model zoo uses to fetch the weights). Checks that the two checkpoints share the frozen codebook and decoder bit for bit.

    python scripts/package_model.py --stage1 runs/stage1/model.pt --stage2 runs/stage2/model.pt --output models/model.pt

Several ``--stage2`` checkpoints (of one stage-2 trajectory, e.g. its last interval checkpoints) give their
averaged encoder weights, batch-norm running statistics included, as the stage-2 encoder: stochastic weight
averaging (Izmailov et al., UAI 2018) applied after training. PyTorch's ``torch.optim.swa_utils.AveragedModel``
averages during a run; this averages checkpoints already written. The running statistics are averaged rather
than recomputed over the training data (``swa_utils.update_bn``), an approximation for checkpoints of one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.atomic_files import write_text_atomically  # noqa: E402
from bundle.networks import AnomalyDetector  # noqa: E402
from bundle.weights import load_checkpoint, write_checksum  # noqa: E402


def load_generator_state(path: Path, key: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    checkpoint = load_checkpoint(path)
    state = checkpoint.get(key, checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("encoder.") for k in state):
        raise ValueError(f"{path}: no generator state dict (looked for key '{key}' or a bare state dict)")
    return state


def average_encoder_states(states: Sequence[dict]) -> dict:
    """The last of ``states`` (generator state dicts) with every floating ``encoder.*`` tensor replaced by the mean
    over all of them; integer entries (batch-norm step counts) and the frozen parts are the last one's."""
    averaged = dict(states[-1])
    for name, tensor in states[-1].items():
        if name.startswith("encoder.") and tensor.is_floating_point():
            averaged[name] = torch.stack([state[name] for state in states]).mean(dim=0)
    return averaged


def package(stage1: Path, stage2: Sequence[Path], output: Path, key: str, overwrite: bool, config_file: Path) -> str:
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: exists; pass --overwrite to replace it")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    # lazy=False: a fresh instance each time (the parser caches instantiated content otherwise)
    generator_1 = parser.get_parsed_content("generator_def", lazy=False)
    generator_2 = parser.get_parsed_content("generator_def", lazy=False)
    generator_1.load_state_dict(load_generator_state(stage1, key))
    frozen = {**generator_1.quantizer.state_dict(), **generator_1.decoder.state_dict()}
    stage2_states = []
    for path in stage2:
        generator_2.load_state_dict(load_generator_state(path, key))
        for name, other in {**generator_2.quantizer.state_dict(), **generator_2.decoder.state_dict()}.items():
            if not torch.equal(frozen[name], other):
                raise ValueError(
                    f"{path}: '{name}' differs from stage 1: stage 2 must keep codebook and decoder frozen"
                )
        stage2_states.append({name: tensor.clone() for name, tensor in generator_2.state_dict().items()})
    generator_2.load_state_dict(average_encoder_states(stage2_states))
    detector = AnomalyDetector.from_generators(generator_1, generator_2)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(handle)
    try:
        torch.save(detector.state_dict(), temporary)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; weights are meant to be shared
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return write_checksum(output)


def record_in_large_files(output: Path, digest: str, large_files: Path = ROOT / "large_files.yml") -> bool:
    """Replace the hash of ``output``'s entry in ``large_files`` (comments and layout kept); False when not listed."""
    if not large_files.is_file():
        return False
    for entry in yaml.safe_load(large_files.read_text()).get("large_files", []):
        if (large_files.parent / entry["path"]).resolve() == output.resolve():
            if entry.get("hash_type", "sha256") != "sha256":
                raise ValueError(f"{large_files}: {entry['path']} has hash_type {entry['hash_type']}, not sha256")
            recorded = str(entry.get("hash_val") or "")
            if len(recorded) != 64:
                raise ValueError(f"{large_files}: {entry['path']} has no sha256 hash_val to replace")
            write_text_atomically(large_files, large_files.read_text().replace(recorded, digest))
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", type=Path, required=True, help="stage-1 checkpoint (CheckpointSaver file)")
    parser.add_argument(
        "--stage2",
        type=Path,
        nargs="+",
        required=True,
        help="stage-2 checkpoint (CheckpointSaver file); several: their encoder weights averaged",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "models" / "model.pt")
    parser.add_argument("--key", default="generator", help="generator entry in the checkpoints (default: generator)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--config_file", type=Path, default=ROOT / "configs" / "inference.json", help="config holding generator_def"
    )
    args = parser.parse_args()
    try:
        digest = package(args.stage1, args.stage2, args.output, args.key, args.overwrite, args.config_file)
    except (ValueError, FileNotFoundError) as error:
        print(f"package_model.py: {error}", file=sys.stderr)
        return 2
    print(f"{args.output}: sha256 {digest}")
    if record_in_large_files(args.output, digest):
        print(f"{ROOT / 'large_files.yml'}: hash of {args.output.name} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
