"""Whole-pipeline inference benchmark: one scan through configs/inference.json, timed per stage, beside a naive peer.

The scan is a bank phantom (``jaw_phantoms``, held-out mandible, whole-face field of view) with a simulated ONJ
lesion on a 90 x 90 x 83 grid at 2 mm (the size real_anatomy.md gives for a real DentalSegmentator map resampled to
2 mm). Stages, as the bundle runs them:
  load + preprocess -> both reconstructions (sliding window) -> post-processing (regions) -> subject scores -> back
  to the input's grid -> region statistics and report -> each writer (NIfTI, .seg.nrrd, STL, report; the overview
  figure is off, it is not part of the per-scan work a deployment needs).
The architecture and the inferer come from the configs (``configs/inference.json``: ``generator_def``,
``inferer``, ``preprocessing``, ``segmentation_steps``, ``scoring_steps``, ``inversion_steps``, ``report_steps``
and each writer of ``case_writers``, timed apart) through MONAI's ``ConfigParser``; ``--set ID=VALUE`` overrides
config ids as ``monai.bundle run`` does.
Naive peer, in the same run (``scripts.benchmarking.naive_peer``): two separate MONAI ``VQVAE`` networks with the
generator's widths below full resolution (same latent grid), each through MONAI's ``SlidingWindowInferer`` with
method.md's 64^3 windows at overlap 0.5, and the squared difference of their outputs. Stages and peer run in turn
in every round (one warm-up round, then ``--repeats`` timed ones; medians reported). Peak memory is the process's
maximum resident set size after the timed runs (torch and MONAI included). From the bundle root:

    python -m scripts.benchmark_inference [--repeats 3] [--json docs/benchmark_inference.json] \
        [--markdown docs/benchmark_inference_table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from bundle.atomic_files import write_json_atomically, write_text_atomically
from bundle.weights import load_verified_weights, write_checksum
from jaw_phantoms.anatomy import AnatomyOptions
from jaw_phantoms.phantom import make_phantom
from scripts.benchmarking import GRID, ROOT, naive_peer, peak_rss_bytes, read_config, resolved_arguments, time_in_turn

LESION_VOLUME_ML = 5.0  # mid-range of the simulated ONJ (0.5-10 cm^3), large enough that the wound writers have work


def write_scan(folder: Path, spacing_mm: float = 2.0, seed: int = 4242) -> Path:
    """A phantom with an ONJ lesion of ``LESION_VOLUME_ML`` (held-out bank mandible, whole face; ``seed``) at 2 mm,
    padded or cropped (centred) to ``GRID``, then written at ``spacing_mm`` (2 mm divided by a whole number): each
    voxel repeated along every axis, as a DentalSegmentator map at the scanner's resolution would be (0.5 mm:
    360 x 360 x 332)."""
    factor = round(2.0 / spacing_mm)
    if factor < 1 or abs(factor * spacing_mm - 2.0) > 1e-6:
        raise ValueError(f"--input_spacing must be 2 mm divided by a whole number, got {spacing_mm}")
    options = AnatomyOptions(shape_split="held_out", field_of_view="face")
    phantom = make_phantom(
        seed=seed, spacing=2.0, lesion="onj", options=options, lesion_volume_ml=LESION_VOLUME_ML, with_cbct=False
    )
    labels = np.zeros(GRID, np.int16)
    src = [slice(max(0, (s - g) // 2), max(0, (s - g) // 2) + min(s, g)) for s, g in zip(phantom.labels.shape, GRID)]
    dst = [slice(max(0, (g - s) // 2), max(0, (g - s) // 2) + min(s, g)) for s, g in zip(phantom.labels.shape, GRID)]
    labels[tuple(dst)] = phantom.labels[tuple(src)]
    for axis in range(3):
        labels = np.repeat(labels, factor, axis=axis)
    affine = phantom.affine @ np.diag([1.0 / factor] * 3 + [1.0])
    affine[:3, 3] += phantom.affine[:3, :3] @ np.full(3, (1.0 / factor - 1.0) / 2)  # same field of view
    path = folder / "benchmark_scan.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


def weights_for(network: torch.nn.Module, folder: Path) -> tuple[Path, str]:
    """Load the shipped weights into ``network`` when they fit its architecture, else save and load random ones."""
    shipped = ROOT / "models" / "model.pt"
    if shipped.is_file():
        try:
            load_verified_weights(network, shipped)
            return shipped, "models/model.pt"
        except RuntimeError:  # trained for another architecture than the configured one
            pass
    path = folder / "model.pt"
    torch.save(network.state_dict(), path)
    write_checksum(path)
    load_verified_weights(network, path)
    return path, "random weights of the configured architecture (models/model.pt absent or of another architecture)"


STAGES = ("load_preprocess", "reconstructions", "postprocess", "scores", "invert", "report")


def writer_ids(parser: ConfigParser) -> list[str]:
    """The config ids of the case writers the configured run uses (``case_writers``), in their order."""
    chosen = parser.get_parsed_content("case_writers")
    ids = [key for key in parser.get() if key.endswith("_writer")]
    by_object = {id(parser.get_parsed_content(key)): key for key in ids}
    return [by_object[id(writer)] for writer in chosen]


def run(repeats: int, input_spacing: float = 2.0, overrides: dict | None = None) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        scan, case_folder = write_scan(folder, input_spacing), folder / "case"
        settings = {"output_dir": str(folder / "out"), "overwrite": True, "write_figure": False, **(overrides or {})}
        parser = read_config("inference.json", device="$torch.device('cpu')", input=str(scan), **settings)
        network = parser.get_parsed_content("network")
        weights, weights_source = weights_for(network, folder)
        parser["checkpoint"] = str(weights)  # the report names the weights it used
        network.eval()
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        chains = {
            name: Compose(parser.get_parsed_content(f"{name}_steps"))
            for name in ("segmentation", "scoring", "inversion", "report")
        }
        writers = {key: parser.get_parsed_content(key) for key in writer_ids(parser)}
        peer = naive_peer(resolved_arguments(parser, "generator_def"), inferer.sw_batch_size)

        item: dict = {}
        steps = {  # each stage takes what the one before it left in ``item``
            "load_preprocess": lambda: item.update(preprocessing({"image": str(scan)})),
            "reconstructions": lambda: item.update(pred=inferer(item["image"].unsqueeze(0), network)[0]),
            "postprocess": lambda: item.update(chains["segmentation"](item)),
            "scores": lambda: item.update(chains["scoring"](item)),
            "invert": lambda: item.update(chains["inversion"](item)),
            "report": lambda: item.update(chains["report"](item)),
            # the writers of WriteCaseFolderd one by one, into a plain folder (its renaming is not timed)
            **{key: (lambda writer=writer: writer(item)) for key, writer in writers.items()},
            "naive_reconstructions": lambda: peer(item["image"].unsqueeze(0)),
            # the latent disagreement map alone: both encoders and the quantizer, no decoder (not part of the total)
            "latent_disagreement_only": lambda: inferer(item["image"].unsqueeze(0), network.latent_disagreement_map),
        }

        def clear() -> None:  # a new scan each round: no outputs to replace, no keys left from the last round
            item.clear()
            shutil.rmtree(case_folder, ignore_errors=True)
            case_folder.mkdir()
            item["case_folder"] = case_folder

        with torch.inference_mode():
            times = time_in_turn(steps, repeats, setup=clear)
        output_bytes = {path.name: path.stat().st_size for path in sorted(case_folder.iterdir())}  # last round's
        stages = (*STAGES, *writers)
        median = {name: times[name]["median"] for name in steps}
        median["write"] = statistics.median(map(sum, zip(*(times[name]["runs"] for name in writers))))
        median["total"] = statistics.median(map(sum, zip(*(times[name]["runs"] for name in stages))))
        naive_total = median["total"] - median["reconstructions"] + median["naive_reconstructions"]
        return {
            "grid": list(GRID),
            "input_spacing_mm": input_spacing,
            "input_shape": list(nib.load(scan).shape),
            "overrides": overrides or {},
            "weights": weights_source,
            "threads": torch.get_num_threads(),
            "sliding_window": {
                "roi_size": list(inferer.roi_size),
                "overlap": inferer.overlap,
                "sw_batch_size": inferer.sw_batch_size,
            },
            "writers": list(writers),
            "median_seconds": {
                name: median[name]
                for name in (*stages, "write", "total", "naive_reconstructions", "latent_disagreement_only")
            },
            "naive_pipeline_seconds": naive_total,
            "speedup_reconstructions": median["naive_reconstructions"] / median["reconstructions"],
            "speedup_pipeline": naive_total / median["total"],
            "total_over_peer_reconstructions": median["total"] / median["naive_reconstructions"],
            "peak_rss_gb": peak_rss_bytes() / 1e9,
            "output_bytes": output_bytes,
            "lesion_volume_ml": LESION_VOLUME_ML,
            "wound_regions": len(item["pred_regions"]),  # of the last round; 0 would leave the mesh writer idle
            "repeats": repeats,
        }


WRITER_NAMES = {
    "anomaly_map_writer": "anomaly map NIfTI",
    "wound_writer": "wound segmentation NIfTI",
    "slicer_segmentation_writer": "wound segmentation .seg.nrrd",
    "mesh_writer": "STL meshes",
    "report_writer": "report JSON",
    "overview_writer": "overview figure",
}


def markdown_table(result: dict) -> str:
    """The per-stage table of a result, as docs/benchmark_inference.md shows it."""
    m, window = result["median_seconds"], result["sliding_window"]
    rows = [
        ("load + preprocess", m["load_preprocess"]),
        (
            f"both reconstructions (windows of {window['roi_size'][0]}^3, overlap {window['overlap']})",
            m["reconstructions"],
        ),
        ("post-processing to regions", m["postprocess"]),
        ("subject scores", m["scores"]),
        ("back to the input's grid", m["invert"]),
        ("region statistics and report", m["report"]),
        *((f"write: {WRITER_NAMES.get(key, key)}", m[key]) for key in result["writers"]),
        ("**total**", m["total"]),
        ("naive peer, reconstructions only (64^3 windows, overlap 0.5)", m["naive_reconstructions"]),
        ("naive peer, whole pipeline", result["naive_pipeline_seconds"]),
    ]
    if "latent_disagreement_only" in m:
        rows.append(
            (
                "latent disagreement map alone (both encoders, no decoder; not in the total)",
                m["latent_disagreement_only"],
            )
        )
    lines = ["| stage | seconds |", "|---|---|"] + [f"| {name} | {seconds:.2f} |" for name, seconds in rows]
    overrides = " ".join(f"{k}={v}" for k, v in result["overrides"].items())
    lines += [
        "",
        f"Whole inference / naive peer's reconstructions: {result['total_over_peer_reconstructions']:.2f}. Speed-up "
        f"against the naive peer: reconstructions x{result['speedup_reconstructions']:.2f}, whole pipeline "
        f"x{result['speedup_pipeline']:.2f}. Weights: {result['weights']}; {result['threads']} threads; peak "
        f"resident memory {result['peak_rss_gb']:.2f} GB; median of {result['repeats']} runs after a warm-up"
        + (f"; config overrides: {overrides}." if overrides else "."),
    ]
    if "wound_regions" in result:
        lines += [
            "",
            f"Scan: ONJ lesion of {result['lesion_volume_ml']:g} cm^3; wound regions found: {result['wound_regions']}.",
        ]
    if result.get("output_bytes"):
        sizes = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in result["output_bytes"].items())
        lines += ["", f"Files written: {sizes}."]
    return "\n".join(lines) + "\n"


def config_value(text: str):
    """A command-line value as ``monai.bundle run`` reads it: JSON when it parses (numbers, lists), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument(
        "--input_spacing",
        type=float,
        default=2.0,
        help="voxel size of the scan given to the bundle, 2 mm divided by a whole number (0.5: a scanner-resolution "
        "map of 360 x 360 x 332); the naive peer always runs on the 2 mm grid",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="ID=VALUE",
        help="config overrides, as monai.bundle run takes them (e.g. anomaly_map_in_input_grid=true)",
    )
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    parser.add_argument("--markdown", type=Path, help="also write the per-stage table (Markdown) to this file")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    overrides = {key: config_value(text) for key, text in (item.split("=", 1) for item in args.set)}
    result = run(args.repeats, args.input_spacing, overrides)
    print(f"input {result['input_shape']} at {args.input_spacing:g} mm\n\n{markdown_table(result)}")
    if args.json:
        write_json_atomically(args.json, result)
    if args.markdown:
        command = (
            f"python -m scripts.benchmark_inference --repeats {args.repeats} --input_spacing {args.input_spacing:g} "
            + (f"--set {' '.join(args.set)} " if args.set else "")
            + f"--json {args.json} --markdown {args.markdown}"
        )
        write_text_atomically(args.markdown, f"<!-- generated by: {command} -->\n\n{markdown_table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
