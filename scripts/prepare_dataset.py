"""Check a folder of DentalSegmentator label maps (and optionally their raw CBCTs) and write a seeded MONAI datalist.

Every label map (.nii, .nii.gz, .nrrd, .mha, directly in --label_dir) goes through the shared preprocessing of
configs/train.json up to and including its label validation (loading, then ValidateLabelsd with --remap_preset), so a
file accepted here is a file the training and inference chains accept. Nothing stops at the first bad file: every
rejected file is printed with its reason and listed under "rejected" in the datalist.

With --cbct_dir, each label map needs its raw CBCT: the file in --cbct_dir whose stem (name without .nii.gz, .nii,
.nrrd or .mha) is the label map's stem, or the label map's stem + "_0000" (the nnU-Net input name that DentalSegmentator
was run on). Only the CBCT's header is read: it must be a 3D image with the label map's shape and affine.

    python scripts/prepare_dataset.py --label_dir data/healthy/labels --cbct_dir data/healthy/cbct \\
        --output data/healthy/datalist.json --fractions 0.7 0.1 0.2 --seed 0

Datalist: {"training": [...], "validation": [...], "test": [...], "rejected": [...]} plus a few metadata keys; entries
are {"image": label map, "cbct": raw CBCT} with paths relative to the datalist's folder, as
monai.data.load_decathlon_datalist(..., base_dir=<that folder>) expects. Exit code 0 when at least one file was
accepted, 2 (one line on stderr, nothing written) when none was, an input folder is missing, the output exists without
--overwrite, or an argument is invalid.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.atomic_files import write_json_atomically  # noqa: E402
from bundle.transforms import REMAP_PRESETS, ValidateLabelsd  # noqa: E402

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
NNUNET_CHANNEL_SUFFIX = "_0000"
SPLITS = ("training", "validation", "test")
DEFAULT_CONFIG = ROOT / "configs" / "train.json"


@dataclass(frozen=True)
class Candidate:
    """One label map to check, with its paired CBCT (None when no --cbct_dir) and what is wrong with the pairing."""

    label: Path
    cbct: Path | None = None
    pairing_problem: str | None = None


def file_stem(path: Path) -> str | None:
    """The name without its image suffix (case-insensitive), or None when the suffix is not a supported one."""
    lower = path.name.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def list_images(folder: Path) -> list[Path]:
    """The files directly in ``folder`` with a supported suffix, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and file_stem(p) is not None)


def _group_by_stem(paths: Sequence[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(file_stem(path), []).append(path)
    return groups


def pair_with_cbcts(labels: Sequence[Path], cbct_dir: Path | None) -> list[Candidate]:
    """Match each label map to ``<stem>.<ext>`` or ``<stem>_0000.<ext>`` in ``cbct_dir``; exactly one must match.

    Label maps that share a stem (``a.nii`` and ``a.nii.gz``) are all flagged: one scan must not end up in two splits.
    """
    labels_by_stem = _group_by_stem(labels)
    cbcts_by_stem = _group_by_stem(list_images(cbct_dir)) if cbct_dir is not None else {}
    candidates = []
    for label in labels:
        stem = file_stem(label)
        namesakes = [other.name for other in labels_by_stem[stem] if other != label]
        if namesakes:
            candidates.append(Candidate(label, pairing_problem=f"same stem as {', '.join(namesakes)}: keep one"))
            continue
        if cbct_dir is None:
            candidates.append(Candidate(label))
            continue
        matches = cbcts_by_stem.get(stem, []) + cbcts_by_stem.get(stem + NNUNET_CHANNEL_SUFFIX, [])
        if len(matches) == 1:
            candidates.append(Candidate(label, cbct=matches[0]))
        elif not matches:
            problem = f"no CBCT named {stem} or {stem}{NNUNET_CHANNEL_SUFFIX} (.nii.gz/.nii/.nrrd/.mha) in {cbct_dir}"
            candidates.append(Candidate(label, pairing_problem=problem))
        else:
            names = ", ".join(m.name for m in matches)
            candidates.append(Candidate(label, pairing_problem=f"several CBCTs match in {cbct_dir}: {names}"))
    return candidates


def header_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape and 4x4 RAS affine of an image from its header alone, in the conventions of MONAI's readers
    (NibabelReader for NIfTI; ITKReader, LPS converted to RAS, for NRRD/MHA), so that it compares with the
    ``affine`` and shape of the MetaTensor that ``LoadImage`` returns for the label map."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        image = nib.load(path)
        return tuple(int(n) for n in image.shape), np.asarray(image.affine, dtype=np.float64)
    import itk  # only NRRD/MHA headers need ITK, which takes seconds to load its modules on first use

    reader = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if reader is None:
        raise ValueError(f"{path}: not a readable NRRD/MHA image")
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    ndim = reader.GetNumberOfDimensions()
    shape = tuple(int(reader.GetDimensions(axis)) for axis in range(ndim))
    if ndim != 3:
        return shape, np.eye(4)
    direction = np.array([reader.GetDirection(axis) for axis in range(3)], dtype=np.float64).T  # columns = axes
    spacing = [reader.GetSpacing(axis) for axis in range(3)]
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = [reader.GetOrigin(axis) for axis in range(3)]
    affine[:2] *= -1  # LPS -> RAS, as MONAI's ITKReader does by default
    return shape, affine


def build_validation_chain(config_file: Path, remap_preset: str | None) -> tuple[str, Compose, Compose]:
    """The image key and the two parts of ``preprocessing`` in ``config_file`` that this script runs: the transforms
    before ``ValidateLabelsd`` (loading) and ``ValidateLabelsd`` itself, with ``remap_preset`` when given."""
    parser = ConfigParser()
    parser.read_config(str(config_file))
    if remap_preset is not None:
        parser["remap_preset"] = remap_preset
    chain = list(parser.get_parsed_content("preprocessing"))
    position = next((i for i, transform in enumerate(chain) if isinstance(transform, ValidateLabelsd)), None)
    if position is None:
        raise ValueError(f"{config_file}: 'preprocessing' has no bundle.transforms.ValidateLabelsd to validate with")
    return parser.get_parsed_content("image_key"), Compose(chain[:position]), Compose(chain[position : position + 1])


_worker: dict = {}


def _init_worker(config_file: Path, remap_preset: str | None, affine_atol: float, threads: int) -> None:
    torch.set_num_threads(threads)
    image_key, load, validate = build_validation_chain(config_file, remap_preset)
    _worker.update(image_key=image_key, load=load, validate=validate, affine_atol=affine_atol)


def _innermost_message(error: BaseException) -> str:
    # MONAI's Compose wraps a failing transform's error in RuntimeError("applying transform ..."): report the cause
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_candidate(candidate: Candidate) -> list[str]:
    """The problems found with one label map and its CBCT, each without the file name in front; an empty list
    accepts the file. Runs in a worker process."""
    key, label = _worker["image_key"], candidate.label
    problems: list[str] = []
    geometry: tuple[tuple[int, ...], np.ndarray] | None = None
    try:
        loaded = _worker["load"]({key: str(label)})
    except Exception as error:
        problems.append(f"cannot be read as an image ({_innermost_message(error)})")
    else:
        try:
            _worker["validate"](loaded)
            geometry = tuple(loaded[key].shape), np.asarray(loaded[key].affine, dtype=np.float64)
        except Exception as error:
            problems.append(_innermost_message(error).removeprefix(f"{label}: "))
        del loaded
    if candidate.pairing_problem is not None:
        problems.append(candidate.pairing_problem)
    elif candidate.cbct is not None and geometry is not None:
        problems.extend(_cbct_problems(candidate.cbct, *geometry, _worker["affine_atol"]))
    return problems


def _cbct_problems(cbct: Path, shape: tuple[int, ...], affine: np.ndarray, atol: float) -> list[str]:
    try:
        cbct_shape, cbct_affine = header_geometry(cbct)
    except Exception as error:
        return [f"its CBCT {cbct} cannot be read ({_innermost_message(error)})"]
    if cbct_shape != shape:
        return [f"its CBCT {cbct.name} has shape {cbct_shape}, the label map {shape}"]
    if not np.allclose(cbct_affine, affine, rtol=0.0, atol=atol):
        largest = float(np.abs(cbct_affine - affine).max())
        return [f"its CBCT {cbct.name} has a different affine (largest difference {largest:.4g} mm > {atol} mm)"]
    return []


def check_all(
    candidates: Sequence[Candidate],
    config_file: Path,
    remap_preset: str | None,
    affine_atol: float,
    workers: int,
    report: Callable[[str], None] = lambda line: None,
) -> dict[Path, list[str]]:
    """Check every candidate in a pool of ``workers`` processes; returns the problems per label map."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    init_args = (config_file, remap_preset, affine_atol, threads)
    problems: dict[Path, list[str]] = {}
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=init_args) as pool:
        futures = {pool.submit(check_candidate, candidate): candidate for candidate in candidates}
        for future in as_completed(futures):
            label = futures[future].label
            try:
                problems[label] = future.result()
            except BrokenProcessPool:
                continue
            report(f"[{len(problems)}/{len(candidates)}] {label.name}: {'rejected' if problems[label] else 'ok'}")
    # A reader that crashes its process (a native library on a malformed file) breaks the whole pool: check the files
    # left one at a time, each in a fresh process, so that only the file that crashes again is rejected.
    for candidate in (c for c in candidates if c.label not in problems):
        with ProcessPoolExecutor(max_workers=1, initializer=_init_worker, initargs=init_args) as pool:
            try:
                problems[candidate.label] = pool.submit(check_candidate, candidate).result()
            except BrokenProcessPool:
                problems[candidate.label] = ["the process reading it crashed"]
        report(f"[{len(problems)}/{len(candidates)}] {candidate.label.name}: re-checked alone")
    return problems


def split_sizes(count: int, fractions: Sequence[float]) -> list[int]:
    """Sizes that sum to ``count`` and follow ``fractions`` (largest remainder; ties go to the earlier split)."""
    exact = [count * fraction for fraction in fractions]
    sizes = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def split_entries(entries: Sequence[dict], fractions: Sequence[float], seed: int) -> dict[str, list[dict]]:
    """Shuffle ``entries`` (sorted by image path first, so only the seed decides) and cut them into the splits."""
    shuffled = sorted(entries, key=lambda entry: entry["image"])
    random.Random(seed).shuffle(shuffled)
    splits, start = {}, 0
    for name, size in zip(SPLITS, split_sizes(len(shuffled), fractions)):
        splits[name] = shuffled[start : start + size]
        start += size
    return splits


def prepare(
    label_dir: Path,
    output: Path,
    cbct_dir: Path | None = None,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    remap_preset: str | None = None,
    workers: int = 2,
    affine_atol: float = 1e-3,
    overwrite: bool = False,
    config_file: Path = DEFAULT_CONFIG,
    report: Callable[[str], None] = lambda line: None,
) -> dict:
    """Check every label map in ``label_dir``, write the datalist to ``output`` and return it.

    Raises ``FileNotFoundError``/``ValueError`` (nothing written) when an input folder is missing, ``output`` exists
    without ``overwrite``, an argument is invalid or no label map passes.
    """
    for folder, option in ((label_dir, "--label_dir"), (cbct_dir, "--cbct_dir")):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{folder}: {option} folder not found")
    if cbct_dir is not None and os.path.samefile(label_dir, cbct_dir):
        raise ValueError(f"{cbct_dir}: --cbct_dir is the --label_dir folder; keep label maps and CBCTs apart")
    if output.is_dir():
        raise ValueError(f"{output}: is a folder; --output is the datalist file to write")
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: exists; pass --overwrite to replace it")
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"--fractions {list(fractions)}: need three non-negative fractions that sum to 1")
    if workers < 1:
        raise ValueError(f"--workers {workers}: need at least 1")
    if remap_preset is not None and remap_preset not in REMAP_PRESETS:
        raise ValueError(f"--remap_preset {remap_preset}: unknown, choose one of {sorted(REMAP_PRESETS)}")
    build_validation_chain(config_file, remap_preset)  # a broken config fails here, once, not in every worker

    labels = list_images(label_dir)
    if not labels:
        raise ValueError(f"{label_dir}: no label maps ({', '.join(LABEL_SUFFIXES)}) in this folder")
    candidates = pair_with_cbcts(labels, cbct_dir)
    problems = check_all(candidates, config_file, remap_preset, affine_atol, workers, report)

    base = os.path.abspath(output.parent)

    def relative(path: Path) -> str:
        return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()

    accepted, rejected = [], []
    for candidate in candidates:
        if problems[candidate.label]:
            reason = f"{candidate.label}: {'; '.join(problems[candidate.label])}"
            rejected.append({"image": relative(candidate.label), "reason": reason})
        elif candidate.cbct is None:
            accepted.append({"image": relative(candidate.label)})
        else:
            accepted.append({"image": relative(candidate.label), "cbct": relative(candidate.cbct)})
    for entry in rejected:
        report(f"rejected: {entry['reason']}")
    if not accepted:
        raise ValueError(f"{label_dir}: none of the {len(labels)} label maps is valid (reasons above); nothing written")

    splits = split_entries(accepted, fractions, seed)
    datalist = {
        "description": "DentalSegmentator label maps checked by scripts/prepare_dataset.py",
        "remap_preset": remap_preset or "dentalsegmentator",
        "seed": seed,
        "fractions": dict(zip(SPLITS, fractions)),
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        **splits,
        "rejected": rejected,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and not overwrite:  # written meanwhile, while the label maps were checked
        raise ValueError(f"{output}: exists; pass --overwrite to replace it")
    write_json_atomically(output, datalist)
    return datalist


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label_dir", type=Path, required=True, help="folder of DentalSegmentator label maps")
    parser.add_argument("--cbct_dir", type=Path, help="folder of the paired raw CBCTs (optional)")
    parser.add_argument("--output", type=Path, required=True, help="datalist JSON to write")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[0.7, 0.1, 0.2],
        metavar=("TRAIN", "VALIDATION", "TEST"),
        help="split fractions, summing to 1 (default: 0.7 0.1 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    parser.add_argument(
        "--remap_preset",
        help=f"label convention of the inputs, passed to ValidateLabels: one of {sorted(REMAP_PRESETS)} "
        "(default: the config's remap_preset, dentalsegmentator)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes checking files in parallel (default: 2)")
    parser.add_argument(
        "--affine_atol",
        type=float,
        default=1e-3,
        help="largest difference (mm) allowed between a CBCT's affine and its label map's (default: 0.001)",
    )
    parser.add_argument("--config_file", type=Path, default=DEFAULT_CONFIG, help="config holding 'preprocessing'")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    parser.add_argument("--quiet", action="store_true", help="print only rejections and the summary")
    args = parser.parse_args(argv)

    def report(line: str) -> None:
        if line.startswith("rejected:") or not args.quiet:
            print(line, file=sys.stderr)

    try:
        datalist = prepare(
            args.label_dir,
            args.output,
            cbct_dir=args.cbct_dir,
            fractions=args.fractions,
            seed=args.seed,
            remap_preset=args.remap_preset,
            workers=args.workers,
            affine_atol=args.affine_atol,
            overwrite=args.overwrite,
            config_file=args.config_file,
            report=report,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"prepare_dataset.py: {error}", file=sys.stderr)
        return 2
    for name in SPLITS:
        if not datalist[name]:
            print(f"warning: the '{name}' list is empty", file=sys.stderr)
    accepted = sum(len(datalist[name]) for name in SPLITS)
    sizes = ", ".join(f"{name} {len(datalist[name])}" for name in SPLITS)
    print(f"{args.output}: {accepted} accepted ({sizes}), {len(datalist['rejected'])} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
