"""What the benchmark scripts share: the bundle's configs, the naive peer, a timing loop and the peak memory."""

from __future__ import annotations

import inspect
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import VQVAE

from bundle.networks import VQGANGenerator

ROOT = Path(__file__).resolve().parents[1]
GRID = (90, 90, 83)  # a real DentalSegmentator map resampled to 2 mm (real_anatomy.md)
PEER_WINDOW, PEER_OVERLAP = (64, 64, 64), 0.5  # method.md's inference windows


def read_config(name: str, **overrides) -> ConfigParser:
    """``configs/<name>`` through MONAI's ``ConfigParser``, with ``bundle_root`` set and ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / name))
    parser.update({"bundle_root": str(ROOT), **overrides})
    return parser


def resolved_arguments(parser: ConfigParser, id: str) -> dict:
    """The keyword arguments of the component ``id``, references and expressions resolved (``_target_`` left out)."""
    return {key: parser.get_parsed_content(f"{id}#{key}") for key in parser[id] if not key.startswith("_")}


def peer_vqvae(generator_arguments: Mapping) -> VQVAE:
    """MONAI ``VQVAE`` with a ``VQGANGenerator``'s widths below full resolution, so with the same latent grid.

    ``generator_arguments``: the generator's keyword arguments (``resolved_arguments`` of its definition); missing
    ones take ``VQGANGenerator``'s defaults. ``VQVAE`` halves the resolution once per width, the generator once per
    level after a stem of stride ``stem_stride``; its residual blocks per level become the largest of those kept.
    """
    bound = inspect.signature(VQGANGenerator).bind(**generator_arguments)
    bound.apply_defaults()
    arguments = bound.arguments
    channels = tuple(arguments["channels"])
    levels = len(channels) if arguments["stem_stride"] == 2 else len(channels) - 1
    if levels < 1:
        raise ValueError(f"a generator with channels {channels} and stem_stride 1 does not downsample")
    widths = channels[len(channels) - levels :]
    blocks = arguments["num_res_blocks"]
    blocks = blocks[len(channels) - levels :] if isinstance(blocks, (list, tuple)) else [blocks]
    return VQVAE(
        spatial_dims=arguments["spatial_dims"],
        in_channels=arguments["in_channels"],
        out_channels=arguments["out_channels"],
        channels=widths,
        num_res_layers=max(1, *blocks),
        num_res_channels=widths,
        downsample_parameters=((2, 4, 1, 1),) * levels,
        upsample_parameters=((2, 4, 1, 1, 0),) * levels,
        num_embeddings=arguments["num_embeddings"],
        embedding_dim=arguments["embedding_dim"],
    )


def naive_peer(generator_arguments: Mapping, sw_batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The naive anomaly map: two separate ``peer_vqvae`` networks (eval mode), each through MONAI's
    ``SlidingWindowInferer`` with method.md's 64^3 windows at overlap 0.5, and the squared difference of their
    outputs. Takes and returns (B, 1, X, Y, Z) tensors."""
    first, second = peer_vqvae(generator_arguments).eval(), peer_vqvae(generator_arguments).eval()
    inferer = SlidingWindowInferer(roi_size=PEER_WINDOW, sw_batch_size=sw_batch_size, overlap=PEER_OVERLAP)

    def anomaly_map(image: torch.Tensor) -> torch.Tensor:
        return (inferer(image, lambda x: second(x)[0]) - inferer(image, lambda x: first(x)[0])) ** 2

    return anomaly_map


def time_in_turn(
    steps: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
    synchronize: Callable[[], object] | None = None,
) -> dict[str, dict]:
    """Wall time of each step: ``warmup`` untimed rounds, then ``repeats`` timed ones; a round calls ``setup``
    (untimed) and then every step in order, so that load from other processes hits all steps alike and a step may
    use what the one before it left. ``synchronize`` (e.g. ``torch.cuda.synchronize``) is called around each step.

    Returns ``{name: {"median": s, "min": s, "runs": [s, ...]}}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    runs: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        if setup is not None:
            setup()
        for name, step in steps.items():
            if synchronize is not None:
                synchronize()
            start = time.perf_counter()
            step()
            if synchronize is not None:
                synchronize()
            if round_ >= warmup:
                runs[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(times), "min": min(times), "runs": times} for name, times in runs.items()
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory, torch and MONAI included: ``VmHWM`` on Linux, ``ru_maxrss`` elsewhere.

    ``VmHWM`` belongs to the process's own address space; ``ru_maxrss`` of a process started by ``subprocess``
    (``vfork``) starts from its parent's peak on Linux.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024
