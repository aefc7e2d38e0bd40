"""Whole-pipeline inference benchmark: one scan through configs/inference.json, timed per stage, beside a naive peer.

The scan is a bank phantom (``jaw_phantoms``, held-out mandible, whole-face field of view) with a simulated ONJ
lesion on a 90 x 90 x 83 grid at 2 mm (the size real_anatomy.md gives for a real DentalSegmentator map resampled to
2 mm). Stages, as the bundle runs them:
  load + preprocess -> both reconstructions (sliding window) -> post-processing (regions) -> invert + write (NIfTI,
  STL, report; the overview figure is off, it is not part of the per-scan work a deployment needs).
The architecture and the inferer come from the configs (``configs/inference.json``: ``generator_def``,
``inferer``) through MONAI's ``ConfigParser``. Naive peer, in the same run: two separate
MONAI ``VQVAE`` networks with the generator's widths below full resolution (same latent grid), each through MONAI's
``SlidingWindowInferer`` with method.md's 64^3 windows at overlap 0.5, and the squared difference of their outputs.
Peak memory is the process's maximum resident set size after the timed runs (torch and MONAI included).

    python scripts/benchmark_inference.py [--repeats 3] [--json docs/benchmark_inference.json] \
        [--markdown docs/benchmark_inference_table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import VQVAE
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.weights import load_verified_weights, write_checksum  # noqa: E402
from jaw_phantoms.anatomy import AnatomyOptions  # noqa: E402
from jaw_phantoms.phantom import make_phantom  # noqa: E402

GRID = (90, 90, 83)
PEER_WINDOW = (64, 64, 64)  # method.md's inference window


def write_scan(folder: Path) -> Path:
    """A lesion phantom (held-out bank mandible, whole face) at 2 mm, padded or cropped (centred) to ``GRID``."""
    options = AnatomyOptions(shape_split="held_out", field_of_view="face")
    phantom = make_phantom(seed=4242, spacing=2.0, lesion="onj", options=options, with_cbct=False)
    labels = np.zeros(GRID, np.int16)
    src = [slice(max(0, (s - g) // 2), max(0, (s - g) // 2) + min(s, g)) for s, g in zip(phantom.labels.shape, GRID)]
    dst = [slice(max(0, (g - s) // 2), max(0, (g - s) // 2) + min(s, g)) for s, g in zip(phantom.labels.shape, GRID)]
    labels[tuple(dst)] = phantom.labels[tuple(src)]
    path = folder / "benchmark_scan.nii.gz"
    nib.save(nib.Nifti1Image(labels, phantom.affine), path)
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


def naive_peer(parser: ConfigParser) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two MONAI VQVAEs with the configured generator's widths below full resolution (the same latent grid)."""
    generator = parser.get_parsed_content("generator_def")
    widths = generator.channels[1:] if generator.stem_stride == 1 else generator.channels
    blocks = parser.get("generator_def").get("num_res_blocks", 1)  # the raw definition
    res_layers = max(blocks[-len(widths) :]) if isinstance(blocks, (list, tuple)) else int(blocks)

    def vqvae() -> torch.nn.Module:
        return VQVAE(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=widths,
            num_res_layers=res_layers,
            num_res_channels=widths,
            downsample_parameters=((2, 4, 1, 1),) * len(widths),
            upsample_parameters=((2, 4, 1, 1, 0),) * len(widths),
            num_embeddings=generator.quantizer.num_embeddings,
            embedding_dim=generator.quantizer.embedding_dim,
        ).eval()

    return vqvae(), vqvae()


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def run(repeats: int) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        scan = write_scan(folder)
        parser = ConfigParser()
        parser.read_config(str(ROOT / "configs" / "inference.json"))
        parser["bundle_root"] = str(ROOT)
        parser.update({"input": str(scan), "output_dir": str(folder / "out"), "overwrite": True, "write_figure": False})
        (folder / "out").mkdir()
        network = parser.get_parsed_content("network")
        weights, weights_source = weights_for(network, folder)
        parser["checkpoint"] = str(weights)  # the report names the weights it used
        network.eval()
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        regions = Compose(parser.get_parsed_content("segmentation_steps"))
        writing = Compose(parser.get_parsed_content("output_steps"))
        peer_1, peer_2 = naive_peer(parser)
        peer_inferer = SlidingWindowInferer(roi_size=PEER_WINDOW, sw_batch_size=inferer.sw_batch_size, overlap=0.5)

        rows: dict[str, list[float]] = {
            k: []
            for k in (
                "load_preprocess",
                "reconstructions",
                "postprocess",
                "invert_write",
                "total",
                "naive_reconstructions",
            )
        }
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first run warms up and is dropped
                data, t_load = timed(preprocessing, {"image": str(scan)})
                image = data["image"].unsqueeze(0)
                prediction, t_net = timed(inferer, image, network)
                item = {**data, "pred": prediction[0]}
                item, t_post = timed(regions, item)
                for case in (folder / "out").glob("*"):
                    shutil.rmtree(case)
                _, t_write = timed(writing, item)
                _, t_naive = timed(
                    lambda: (peer_inferer(image, lambda x: peer_2(x)[0]) - peer_inferer(image, lambda x: peer_1(x)[0]))
                    ** 2
                )
                for key, value in zip(
                    rows, (t_load, t_net, t_post, t_write, t_load + t_net + t_post + t_write, t_naive)
                ):
                    rows[key].append(value)
        median = {k: float(np.median(v[1:])) for k, v in rows.items()}
        naive_total = median["total"] - median["reconstructions"] + median["naive_reconstructions"]
        return {
            "grid": list(GRID),
            "weights": weights_source,
            "threads": torch.get_num_threads(),
            "sliding_window": {
                "roi_size": list(inferer.roi_size),
                "overlap": inferer.overlap,
                "sw_batch_size": inferer.sw_batch_size,
            },
            "median_seconds": median,
            "naive_pipeline_seconds": naive_total,
            "speedup_reconstructions": median["naive_reconstructions"] / median["reconstructions"],
            "speedup_pipeline": naive_total / median["total"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "repeats": repeats,
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
        ("invert to the input grid + write NIfTI, STL, report", m["invert_write"]),
        ("**total**", m["total"]),
        ("naive peer, reconstructions only (64^3 windows, overlap 0.5)", m["naive_reconstructions"]),
        ("naive peer, whole pipeline", result["naive_pipeline_seconds"]),
    ]
    lines = ["| stage | seconds |", "|---|---|"] + [f"| {name} | {seconds:.2f} |" for name, seconds in rows]
    lines += [
        "",
        f"Speed-up against the naive peer: reconstructions x{result['speedup_reconstructions']:.2f}, whole pipeline "
        f"x{result['speedup_pipeline']:.2f}. Weights: {result['weights']}; {result['threads']} threads; peak "
        f"resident memory {result['peak_rss_gb']:.2f} GB; median of {result['repeats']} runs after a warm-up.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    parser.add_argument("--markdown", type=Path, help="also write the per-stage table (Markdown) to this file")
    args = parser.parse_args()
    result = run(args.repeats)
    m = result["median_seconds"]
    print(f"grid {result['grid']} at 2 mm, {result['threads']} threads, weights: {result['weights']}")
    for key in ("load_preprocess", "reconstructions", "postprocess", "invert_write", "total"):
        print(f"  {key:<24}{m[key]:8.2f} s")
    print(f"  naive reconstructions   {m['naive_reconstructions']:8.2f} s  (two MONAI VQVAEs, overlap 0.5)")
    print(f"  naive pipeline          {result['naive_pipeline_seconds']:8.2f} s")
    print(
        f"speed-up: reconstructions x{result['speedup_reconstructions']:.2f}, "
        f"pipeline x{result['speedup_pipeline']:.2f}"
    )
    print(f"peak RSS {result['peak_rss_gb']:.2f} GB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=4) + "\n")
    if args.markdown:
        command = (
            f"python scripts/benchmark_inference.py --repeats {args.repeats} --json {args.json} "
            f"--markdown {args.markdown}"
        )
        args.markdown.write_text(f"<!-- generated by: {command} -->\n\n{markdown_table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
