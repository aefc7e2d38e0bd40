"""Training-speed benchmark: one VQ-GAN iteration (generator step, then discriminator step) against two ceilings.

Measures, in one run and interleaved (so that load from other processes hits every line alike):
- the bundle's iteration, ``bundle.gan_step.gan_training_step`` with the generator, discriminator and optimisers of
  ``configs/train.json`` (``network``, ``discriminator``, ``generator_optimizer``, ``discriminator_optimizer``, read
  through MONAI's ``ConfigParser``; the command-line options override the widths);
- the same networks trained by a plain PyTorch step that gets the adaptive weight from two full extra backward passes;
- a peer: MONAI's ``VQVAE`` (``scripts.benchmarking.peer_vqvae``: the generator's widths below full resolution) and
  the configured ``PatchDiscriminator`` in its default layout, trained by the same plain step;
- a float32 matmul ceiling (large ``torch.mm``) and a convolution ceiling (a large channels-last 3x3x3 ``conv3d``);
- optionally, inference of one 90 x 90 x 83 volume through ``configs/inference.json``'s ``network`` (the two-encoder
  anomaly detector of the same generator) and ``inferer``.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one iteration (matmuls and convolutions, forward
and backward). Times are the best of ``--iterations`` runs after ``--warmup`` runs. From the bundle root:

    python -m scripts.benchmark_training                      # CPU, batch 2, 64^3, float32
    python -m scripts.benchmark_training --device cuda --amp bf16 --compile
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from bundle.atomic_files import write_json_atomically
from bundle.gan_step import gan_training_step
from scripts.benchmarking import GRID, peer_vqvae, read_config, resolved_arguments, time_in_turn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--size", type=int, default=64, help="cubic crop edge in voxels (default: 64)")
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        help="generator widths (default: configs/train.json#network_def, the same as inference.json's generator_def)",
    )
    parser.add_argument(
        "--num-res-blocks", type=int, nargs="+", help="residual blocks per level (default: config; 1 with --channels)"
    )
    parser.add_argument(
        "--discriminator-channels", type=int, help="PatchDiscriminator width (default: configs/train.json)"
    )
    parser.add_argument(
        "--discriminator-layers", type=int, help="PatchDiscriminator depth (default: configs/train.json)"
    )
    parser.add_argument("--iterations", type=int, default=4, help="timed repetitions of each measurement (default: 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default: 1)")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype (default: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (meant for GPU)")
    parser.add_argument("--no-peer", action="store_true", help="skip the two plain-step comparisons")
    parser.add_argument("--no-inference", action="store_true", help="skip the 90x90x83 inference timing")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing an existing --json file")
    return parser.parse_args(argv)


def read_configs(args: argparse.Namespace) -> tuple[ConfigParser, ConfigParser]:
    """``configs/train.json`` and ``configs/inference.json`` on ``--device``, with the command-line widths."""
    device = f"$torch.device('{args.device}')"
    train, inference = read_config("train.json", device=device), read_config("inference.json", device=device)
    for parser, generator in ((train, "network_def"), (inference, "generator_def")):
        if args.channels:
            parser[f"{generator}#channels"] = args.channels
            parser[f"{generator}#num_res_blocks"] = args.num_res_blocks or 1
        elif args.num_res_blocks:
            parser[f"{generator}#num_res_blocks"] = args.num_res_blocks
    if args.discriminator_channels:
        train["discriminator_channels"] = args.discriminator_channels
    if args.discriminator_layers:
        train["discriminator_layers"] = args.discriminator_layers
    return train, inference


def count_flops(step: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    repeats = 20 if device.type == "cuda" else 4
    return (lambda: [torch.mm(a, b) for _ in range(repeats)]), 2 * n**3 * repeats


def conv_ceiling(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    """A large 3x3x3 convolution in the layout and library (oneDNN / cuDNN) the networks use."""
    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last_3d)
    x = torch.randn(2, 64, 32, 32, 32, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)

    @torch.no_grad()
    def run() -> object:
        return [conv(x) for _ in range(4)]

    return run, count_flops(run)


def maybe_compile(module: torch.nn.Module, enabled: bool) -> None:
    if enabled:
        module.compile()  # in place: parameter names and state_dict keys stay as they are


def bundle_training(train: ConfigParser, compile_: bool) -> tuple:
    """Fresh generator (train mode), channels-last discriminator and optimisers as ``configs/train.json`` makes them."""
    train.parse(reset=True)
    generator, discriminator = train.get_parsed_content("network").train(), train.get_parsed_content("discriminator")
    for module in (generator.encoder, generator.decoder, discriminator):
        maybe_compile(module, compile_)
    optimizers = train.get_parsed_content("generator_optimizer"), train.get_parsed_content("discriminator_optimizer")
    return generator, discriminator, *optimizers


def bundle_step(train: ConfigParser, compile_: bool, images: torch.Tensor, autocast_dtype) -> Callable[[], object]:
    """The bundle's iteration as the trainer runs it."""
    generator, discriminator, optimizer_g, optimizer_d = bundle_training(train, compile_)

    def step() -> object:
        return gan_training_step(
            generator, discriminator, optimizer_g, optimizer_d, images, images, autocast_dtype=autocast_dtype
        )

    return step


def plain_step(forward, last_weight, discriminator, optimizer_g, optimizer_d, images, autocast_dtype):
    """A textbook VQ-GAN iteration: the adaptive weight from two extra full backward passes, D run three times."""

    def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))

    device_type = images.device.type
    autocast = torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)

    def step() -> object:
        optimizer_g.zero_grad()
        with autocast:
            reconstruction, quantization_loss = forward(images)
            logits = discriminator(reconstruction)[-1]
        recon_loss = F.mse_loss(reconstruction.float(), images)
        adv_loss = bce(logits, True)
        recon_loss.backward(retain_graph=True)
        recon_grad = last_weight.grad.detach().clone()
        optimizer_g.zero_grad()
        adv_loss.backward(retain_graph=True)
        adv_grad = last_weight.grad.detach().clone()
        optimizer_g.zero_grad()
        weight = (recon_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, 1e4).detach() * 0.8
        (recon_loss + quantization_loss + weight * adv_loss).backward()
        optimizer_g.step()
        optimizer_d.zero_grad()
        with autocast:
            fake_logits = discriminator(reconstruction.detach())[-1]
            real_logits = discriminator(images)[-1]
        loss_d = 0.5 * (bce(fake_logits, False) + bce(real_logits, True))
        loss_d.backward()
        optimizer_d.step()
        return loss_d.item()

    return step


def naive_bundle_step(train: ConfigParser, compile_: bool, images: torch.Tensor, autocast_dtype):
    """The bundle's own networks and optimisers trained by ``plain_step``: isolates what ``gan_training_step`` saves."""
    generator, discriminator, optimizer_g, optimizer_d = bundle_training(train, compile_)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return generator.reconstruct(x)[:2]

    last_weight = generator.last_layer_weight
    return plain_step(forward, last_weight, discriminator, optimizer_g, optimizer_d, images, autocast_dtype)


def peer_step(train: ConfigParser, compile_: bool, images: torch.Tensor, autocast_dtype):
    """MONAI ``VQVAE`` (``peer_vqvae``) + the configured ``PatchDiscriminator``, default layout, plain Adam, trained
    by ``plain_step``."""
    train.parse(reset=True)
    vqvae = peer_vqvae(resolved_arguments(train, "network_def")).to(images.device)
    discriminator = train.get_parsed_content("discriminator_def").to(images.device)
    for module in (vqvae, discriminator):
        maybe_compile(module, compile_)
    last_weight = [p for p in vqvae.decoder.parameters() if p.dim() == 5][-1]
    optimizers = torch.optim.Adam(vqvae.parameters(), lr=3e-4), torch.optim.Adam(discriminator.parameters(), lr=3e-4)
    return plain_step(vqvae, last_weight, discriminator, *optimizers, images, autocast_dtype)


def inference_run(inference: ConfigParser, device: torch.device, autocast_dtype) -> Callable[[], object]:
    """One 90 x 90 x 83 volume through ``configs/inference.json``'s ``network`` and ``inferer`` (random weights)."""
    network, inferer = inference.get_parsed_content("network").eval(), inference.get_parsed_content("inferer")
    volume = torch.rand(1, 1, *GRID, device=device)
    autocast = torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)

    @torch.no_grad()
    def run() -> object:
        with autocast:
            return inferer(volume, network)

    return run


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs visible"


def run_benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    if args.size < 16 or args.batch < 1 or args.iterations < 1 or args.warmup < 0:
        raise ValueError("--size must be >= 16, --batch and --iterations >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    autocast_dtype = torch.bfloat16 if args.amp == "bf16" else None
    train, inference = read_configs(args)
    images = torch.rand(args.batch, 1, args.size, args.size, args.size, device=device)

    ours = bundle_step(train, args.compile, images, autocast_dtype)
    mm, mm_flops = matmul_ceiling(device, autocast_dtype or torch.float32)
    conv, conv_flops = conv_ceiling(device, autocast_dtype or torch.float32)
    measurements = {"matmul": mm, "conv": conv, "ours": ours}
    flops = {"matmul": mm_flops, "conv": conv_flops}
    ours()  # first call outside the counter (lazy init, compilation)
    flops["ours"] = count_flops(ours)
    if not args.no_peer:
        for name, make in (("naive", naive_bundle_step), ("peer", peer_step)):
            run = make(train, args.compile, images, autocast_dtype)
            run()
            flops[name] = count_flops(run)
            measurements[name] = run
    if not args.no_inference:
        measurements["inference"] = inference_run(inference, device, autocast_dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = time_in_turn(measurements, args.iterations, args.warmup, synchronize=sync)
    seconds = {name: timing["min"] for name, timing in times.items()}

    gflops = {name: flops[name] / seconds[name] / 1e9 for name in flops}
    result = {
        "machine": describe_machine(device),
        "torch": torch.__version__,
        "dtype": "bfloat16 autocast" if autocast_dtype else "float32",
        "compile": args.compile,
        "batch": args.batch,
        "size": args.size,
        "generator": resolved_arguments(train, "network_def"),
        "discriminator": resolved_arguments(train, "discriminator_def"),
        "seconds": seconds,
        "gflop": {name: value / 1e9 for name, value in flops.items()},
        "gflops_per_s": gflops,
        "ours_over_matmul": gflops["ours"] / gflops["matmul"],
        "ours_over_conv": gflops["ours"] / gflops["conv"],
    }
    if "peer" in flops:
        result["peer_over_matmul"] = gflops["peer"] / gflops["matmul"]
        result["speedup_time"] = seconds["peer"] / seconds["ours"]
        result["speedup_gflops"] = gflops["ours"] / gflops["peer"]
        result["speedup_over_naive_step"] = seconds["naive"] / seconds["ours"]
    return result


def format_table(result: dict) -> str:
    precision = "bf16" if result["dtype"].startswith("bfloat16") else "fp32"
    names = {
        "matmul": f"matmul ceiling (torch.mm {precision})",
        "conv": f"conv3d ceiling (64->64, 3^3, {precision})",
        "ours": "bundle: gan_training_step",
        "naive": "bundle networks, plain step",
        "peer": "peer: MONAI VQVAE + PatchGAN, plain step",
        "inference": "inference 90x90x83 (configs/inference.json)",
    }
    lines = [
        f"machine: {result['machine']}; torch {result['torch']}; {result['dtype']}; compile={result['compile']}",
        f"batch {result['batch']} x {result['size']}^3; generator {result['generator']}; "
        f"discriminator {result['discriminator']}",
        "",
        f"{'measurement':<47}{'s/iter':>9}{'GFLOP/iter':>12}{'GFLOP/s':>10}{'% matmul':>10}{'% conv':>8}",
    ]
    for key, label in names.items():
        if key not in result["seconds"]:
            continue
        seconds = result["seconds"][key]
        if key in result["gflop"]:
            rate = result["gflops_per_s"][key]
            of_matmul = 100 * rate / result["gflops_per_s"]["matmul"]
            of_conv = 100 * rate / result["gflops_per_s"]["conv"]
            gflop = result["gflop"][key]
            lines.append(f"{label:<47}{seconds:>9.3f}{gflop:>12.1f}{rate:>10.1f}{of_matmul:>9.0f}%{of_conv:>7.0f}%")
        else:
            lines.append(f"{label:<47}{seconds:>9.3f}")
    if "speedup_time" in result:
        lines += [
            "",
            f"ours / matmul ceiling {result['ours_over_matmul']:.2f}; peer / matmul ceiling "
            f"{result['peer_over_matmul']:.2f}; speed-up over the peer: {result['speedup_time']:.2f}x per iteration, "
            f"{result['speedup_gflops']:.2f}x in GFLOP/s",
            "gan_training_step vs the plain step on the same networks: "
            f"{result['speedup_over_naive_step']:.2f}x faster",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.json and args.json.exists() and not args.overwrite:
            raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
        result = run_benchmark(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(args.json, result)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"benchmark_training: error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
