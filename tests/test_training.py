"""Training through the bundle's configs: stage 1, stage 2, VQ-VAE baseline, resume, multi-process DDP.

Runs go through ``python -m monai.bundle run training`` in a subprocess (or ``ConfigWorkflow`` in-process where the
test must look inside the engine) with a tiny network on tiny phantoms (tests/conftest.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.engines.utils import default_prepare_batch
from monai.networks.nets import PatchDiscriminator
from monai.transforms import CenterSpatialCrop
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.stage2_target import Stage1ReconstructionTarget, stage2_prepare_batch
from bundle.trainer import VQGANTrainer, check_output_dir, init_stage2

ROOT = Path(__file__).resolve().parents[1]
TRAIN = "configs/train.json"
STAGE2 = "configs/train_stage2.json"
VQVAE = "configs/train_vqvae.json"
MULTI_GPU = "configs/multi_gpu_train.json"
CPU = "configs/train_cpu.json"

# One thread per process: on a machine shared with other processes, OpenMP's spinning threads made a 32^3 step
# about 50 times slower than a single thread (measured: 7 s versus 0.1 s per iteration).
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ITERATIONS_PER_EPOCH = 2  # 3 training phantoms, batch 2
LOGGED_SCALARS = {
    "loss_g",
    "loss_recon",
    "loss_vq",
    "loss_adv",
    "loss_d",
    "adv_scale",
    "adv_weight",
    "perplexity",
    "codes_used",
}


def run_training(config_files: list, *overrides: str, processes: int = 0) -> subprocess.CompletedProcess:
    """The bundle's CLI from its root folder (under ``torchrun`` when ``processes`` > 0); fails the test on error."""
    bundle_run = ["-m", "monai.bundle", "run", "training", "--config_file", json.dumps([str(f) for f in config_files])]
    launcher = [sys.executable]
    if processes:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        launcher + bundle_run + list(overrides),
        cwd=ROOT,
        env=SINGLE_THREAD_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file in ``folder``."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pt"))}


def entries(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def assert_same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, tiny_training_overlay) -> Path:
    """A stage-1 CLI run of 2 epochs; returns its output folder (run_dir/stage1)."""
    folder = tmp_path_factory.mktemp("stage1")
    result = run_training([TRAIN, tiny_training_overlay(folder)])
    output = folder / "runs" / "stage1"
    (output / "stdout.txt").write_text(result.stdout + result.stderr)
    return output


def test_train_configs_have_every_required_property(stage1, tmp_path, tiny_training_overlay):
    for index, overlays in enumerate(([], [VQVAE], [STAGE2])):
        overlay = tiny_training_overlay(tmp_path / str(index), stage1_checkpoint=str(stage1 / "model.pt"))
        workflow = ConfigWorkflow(config_file=[TRAIN, *overlays, str(overlay)], workflow_type="train")
        workflow.initialize()
        assert workflow.check_properties() == []
        assert isinstance(workflow.trainer, VQGANTrainer)
        assert workflow.max_epochs == 2


def test_paper_defaults():
    parser = ConfigParser()
    parser.read_config(str(ROOT / TRAIN))
    for name, value in {"batch_size": 16, "learning_rate": 3e-4, "adversarial_weight_factor": 0.8}.items():
        assert parser[name] == value, name
    assert parser["adversarial_delta"] == 1e-4 and parser["crop_size"] == [64, 64, 64]


def test_cpu_overlay_changes_no_architecture_and_only_known_ids():
    train = ConfigParser()
    train.read_config(str(ROOT / TRAIN))
    cpu = ConfigParser.load_config_file(str(ROOT / CPU))
    for key in cpu:
        assert key in train, f"{CPU}: '{key}' is not an id of {TRAIN}"
    assert not any(key.startswith("network") for key in cpu), "the shipped generator must match inference"
    merged = ConfigParser()
    merged.read_config([str(ROOT / TRAIN), str(ROOT / CPU)])
    inference = ConfigParser()
    inference.read_config(str(ROOT / "configs" / "inference.json"))
    shapes = {k: v.shape for k, v in merged.get_parsed_content("network_def").state_dict().items()}
    assert shapes == {k: v.shape for k, v in inference.get_parsed_content("generator_def").state_dict().items()}


def test_stage1_cli_saves_checkpoints_and_logs(stage1):
    final = load(stage1 / "checkpoint_final.pt")
    assert set(final) == {
        "generator",
        "discriminator",
        "generator_optimizer",
        "discriminator_optimizer",
        "trainer",
        "random_states",
    }
    assert final["trainer"]["iteration"] == 2 * ITERATIONS_PER_EPOCH
    assert {"generator", "discriminator"} <= set(load(stage1 / "model.pt"))  # best validation MSE
    assert (stage1 / "checkpoint_epoch=1.pt").is_file()
    scalars = tensorboard_scalars(stage1 / "tensorboard")
    assert LOGGED_SCALARS | {"val_mse"} <= set(scalars)
    assert len(scalars["loss_recon"]) == 2 * ITERATIONS_PER_EPOCH
    assert [step for step, _ in scalars["val_mse"]] == [1, 2]
    assert all(0 < value <= 16 for _, value in scalars["codes_used"])  # tiny codebook: 16 codes
    # default schedule: the first half of the run is the warm-up (4 // 6 = no ramp), the second at full weight
    assert [value > 0 for _, value in sorted(scalars["adv_weight"])] == [False, False, True, True]
    assert [value for _, value in sorted(scalars["adv_scale"])] == [0.0, 0.0, 1.0, 1.0]
    assert "adv_weight" in (stage1 / "stdout.txt").read_text()  # StatsHandler


def test_stage1_reconstruction_loss_drops_on_a_fixed_phantom(tmp_path, tiny_training_overlay, single_thread):
    overlay = tiny_training_overlay(tmp_path, max_epochs=10, val_interval=100, learning_rate=1e-3)
    workflow = ConfigWorkflow(config_file=[TRAIN, str(overlay)], workflow_type="train")
    workflow.initialize()
    generator = workflow.parser.get_parsed_content("network_def")
    fixed = CenterSpatialCrop(32)(_fixed_phantom(workflow))

    def reconstruction_loss(model: torch.nn.Module) -> float:
        # the training loss (batch-norm batch statistics) on a copy, so that the measurement changes nothing
        probe = copy.deepcopy(model).train()
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(probe(fixed[None]), fixed[None]))

    before = reconstruction_loss(generator)
    workflow.run()
    after = reconstruction_loss(generator)
    assert after < 0.5 * before, (before, after)


def _fixed_phantom(workflow: ConfigWorkflow) -> torch.Tensor:
    """x' of the first training phantom after the shared preprocessing (no random crop), (1, X, Y, Z)."""
    preprocessing = workflow.parser.get_parsed_content("preprocessing")
    data = dict(workflow.parser.get_parsed_content("train#data")[0])
    for transform in preprocessing:
        data = transform(data)
    return data["image"].as_tensor()


@pytest.mark.parametrize("stage2_target", ["input", "stage1_reconstruction"])
def test_stage2_cli_trains_only_the_new_encoder(stage1, tmp_path, tiny_training_overlay, stage2_target):
    stage1_files = digest(stage1)
    overlay = tiny_training_overlay(tmp_path, stage1_checkpoint=str(stage1 / "model.pt"))
    run_training([TRAIN, STAGE2, overlay], "--stage2_target", stage2_target)
    first, second = load(stage1 / "model.pt"), load(tmp_path / "runs" / "stage2" / "checkpoint_final.pt")
    g1, g2 = first["generator"], second["generator"]
    # codebook, decoder weights and decoder batch-norm running statistics bit-identical to stage 1
    assert_same(entries(g1, "quantizer."), entries(g2, "quantizer."))
    assert_same(entries(g1, "decoder."), entries(g2, "decoder."))
    assert any("running_mean" in k for k in entries(g2, "decoder."))
    changed = [k for k in entries(g1, "encoder.") if not torch.equal(g1[k], g2[k])]
    assert any(k.endswith("conv.weight") for k in changed), "the stage-2 encoder did not train"
    assert any(not torch.equal(first["discriminator"][k], v) for k, v in second["discriminator"].items())
    optimized = second["generator_optimizer"]["param_groups"][0]["params"]
    encoder_parameters = [k for k in g1 if k.startswith("encoder.") and "running_" not in k and "batches" not in k]
    assert len(optimized) == len(encoder_parameters)
    assert digest(stage1) == stage1_files, "stage 2 modified stage-1 checkpoints"


def test_resume_continues_at_saved_iteration_with_saved_optimizer(
    stage1, tmp_path, tiny_training_overlay, single_thread
):
    saved = load(stage1 / "checkpoint_epoch=1.pt")
    workflow = ConfigWorkflow(
        config_file=[TRAIN, str(tiny_training_overlay(tmp_path))],
        workflow_type="train",
        resume_checkpoint=str(stage1 / "checkpoint_epoch=1.pt"),
    )
    workflow.initialize()
    trainer = workflow.trainer
    seen: dict = {}

    @trainer.on(Events.ITERATION_STARTED(once=saved["trainer"]["iteration"] + 1))
    def record(engine: VQGANTrainer) -> None:
        seen["iteration"] = engine.state.iteration
        seen["generator_optimizer"] = copy.deepcopy(engine.generator_optimizer.state_dict())
        seen["discriminator_optimizer"] = copy.deepcopy(engine.discriminator_optimizer.state_dict())
        seen["generator"] = copy.deepcopy(workflow.parser.get_parsed_content("network_def").state_dict())

    workflow.run()
    assert saved["trainer"]["iteration"] == ITERATIONS_PER_EPOCH
    assert seen["iteration"] == ITERATIONS_PER_EPOCH + 1
    assert trainer.state.iteration == 2 * ITERATIONS_PER_EPOCH  # one more epoch, not two
    assert_same(saved["generator"], seen["generator"])
    for name in ("generator_optimizer", "discriminator_optimizer"):
        restored, expected = seen[name]["state"], saved[name]["state"]
        assert restored.keys() == expected.keys() and len(expected) > 0
        for index in expected:
            assert int(restored[index]["step"]) == ITERATIONS_PER_EPOCH
            assert_same(restored[index], expected[index])


def test_lr_decay_resumes_from_a_checkpoint_without_schedule_state_onto_the_same_curve(
    stage1, tmp_path, tiny_training_overlay, single_thread
):
    """Resumed after epoch 1 of 2 with the decay over the last half: iterations 3 and 4 run at the decayed rates, the
    discriminator keeps its rate, and only the last 1 interval checkpoint is kept (``checkpoints_kept``)."""
    workflow = ConfigWorkflow(
        config_file=[TRAIN, str(tiny_training_overlay(tmp_path))],
        workflow_type="train",
        resume_checkpoint=str(stage1 / "checkpoint_epoch=1.pt"),
        lr_decay_fraction=0.5,
        lr_final_factor=0.1,
        checkpoints_kept=1,
    )
    workflow.initialize()
    base_lr = workflow.parser["learning_rate"]
    rates = []
    workflow.trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda engine: rates.append(
            (engine.generator_optimizer.param_groups[0]["lr"], engine.discriminator_optimizer.param_groups[0]["lr"])
        ),
    )
    workflow.run()
    assert rates == [
        (pytest.approx(base_lr * (0.1 + 0.9 * 0.5)), base_lr),
        (pytest.approx(base_lr * 0.1), base_lr),
    ]
    output = Path(workflow.parser.get_parsed_content("output_dir"))
    assert load(output / "checkpoint_final.pt")["generator_optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        base_lr * 0.1
    )
    assert sorted(p.name for p in output.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt"]


def test_resume_from_a_checkpoint_without_random_states_names_the_file_before_writing(
    stage1, tmp_path, tiny_training_overlay
):
    old_style = {k: v for k, v in load(stage1 / "checkpoint_epoch=1.pt").items() if k != "random_states"}
    path = tmp_path / "old_style.pt"
    torch.save(old_style, path)
    workflow = ConfigWorkflow(
        config_file=[TRAIN, str(tiny_training_overlay(tmp_path / "resumed"))],
        workflow_type="train",
        resume_checkpoint=str(path),
    )
    with pytest.raises(RuntimeError) as failure:  # ConfigParser wraps the component's error
        workflow.initialize()
    assert re.search(r"old_style\.pt: cannot resume .*'random_states'", str(failure.value.__cause__))
    assert not (tmp_path / "resumed" / "runs").exists()


def test_vqvae_overlay_trains_without_discriminator(tmp_path, tiny_training_overlay):
    result = run_training([TRAIN, VQVAE, tiny_training_overlay(tmp_path)], "--run_dir", str(tmp_path / "vqvae"))
    final = load(tmp_path / "vqvae" / "stage1" / "checkpoint_final.pt")
    assert set(final) == {"generator", "generator_optimizer", "trainer", "random_states"}
    assert final["trainer"]["iteration"] == 2 * ITERATIONS_PER_EPOCH
    scalars = tensorboard_scalars(tmp_path / "vqvae" / "stage1" / "tensorboard")
    assert all(value == 0 for tag in ("loss_d", "loss_adv", "adv_weight") for _, value in scalars[tag])
    assert all(value > 0 for _, value in scalars["loss_recon"])
    assert "PatchDiscriminator" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_multi_gpu_overlay_under_torchrun_keeps_ranks_identical(stage, stage1, tmp_path, tiny_training_overlay):
    save_per_rank = (
        "$torch.save({'generator': @network_def.state_dict(), 'discriminator': @discriminator_def.state_dict()}, "
        "os.path.join(@output_dir, 'rank' + str(torch.distributed.get_rank()) + '.pt'))"
    )
    overlay = tiny_training_overlay(
        tmp_path,
        max_epochs=1,
        stage1_checkpoint=str(stage1 / "model.pt"),
        finalize=[save_per_rank, "$torch.distributed.destroy_process_group()"],
    )
    configs = [TRAIN, STAGE2, MULTI_GPU, overlay] if stage == 2 else [TRAIN, MULTI_GPU, overlay]
    result = run_training(configs, "--dist_backend", "gloo", processes=2)
    output = tmp_path / "runs" / f"stage{stage}"
    ranks = [load(output / f"rank{rank}.pt") for rank in (0, 1)]
    final = load(output / "checkpoint_final.pt")
    # 3 phantoms on 2 ranks: the sampler pads to 2 per rank, one batch of 2 each
    assert final["trainer"]["iteration"] == 1
    for network in ("generator", "discriminator"):
        parameters = [k for k in ranks[0][network] if "running_" not in k and "num_batches" not in k]
        for key in parameters:
            assert torch.equal(ranks[0][network][key], ranks[1][network][key]), f"{network}.{key} differs"
        assert any(not torch.equal(ranks[0][network][k], load(stage1 / "model.pt")[network][k]) for k in parameters)
    assert len(list((output / "tensorboard").glob("events.*"))) == 2, "TensorBoard written by rank 0 only"
    assert result.stdout.count("Train completed, saved final checkpoint") >= 1
    if stage == 2:
        stage1_generator = load(stage1 / "model.pt")["generator"]
        for rank in ranks:
            assert_same(entries(stage1_generator, "decoder."), entries(rank["generator"], "decoder."))


def test_check_output_dir_refuses_to_overwrite_checkpoints(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="holds checkpoints"):
        check_output_dir(tmp_path)
    assert check_output_dir(tmp_path, resume=True) == tmp_path
    assert check_output_dir(tmp_path, overwrite=True) == tmp_path
    assert check_output_dir(tmp_path / "new" / "run").is_dir()


def test_init_stage2_errors_name_the_file(tmp_path, stage1, tiny_generator_def):
    generator = ConfigParser({"generator": tiny_generator_def}).get_parsed_content("generator")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        init_stage2(generator, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="folder of its stage-1 checkpoint"):
        init_stage2(generator, stage1 / "model.pt", output_dir=stage1)
    torch.save({"network": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no 'generator' entry"):
        init_stage2(generator, tmp_path / "other.pt")
    wider = ConfigParser({"generator": {**tiny_generator_def, "channels": [8, 8, 16]}}).get_parsed_content("generator")
    with pytest.raises(ValueError, match="'generator' does not match the configured network: .*size mismatch"):
        init_stage2(wider, stage1 / "model.pt")
    frozen = init_stage2(generator, stage1 / "model.pt")
    assert frozen == [generator.quantizer, generator.decoder]
    assert not any(p.requires_grad for module in frozen for p in module.parameters())
    assert all(p.requires_grad for p in generator.encoder.parameters())


def test_stage1_reconstruction_target_is_the_frozen_stage1_output(tmp_path, stage1, tiny_generator_def):
    def generator():
        return ConfigParser({"generator": tiny_generator_def}).get_parsed_content("generator")

    prepare = Stage1ReconstructionTarget(generator(), stage1 / "model.pt")
    reference = generator()
    reference.load_state_dict(load(stage1 / "model.pt")["generator"])
    unmasked = torch.rand(2, 1, 16, 16, 16)
    masked = unmasked.clone()
    masked[:, :, 4:10, 4:10, 4:10] = 0
    inputs, target = prepare({"image": masked, "label": unmasked})
    assert torch.equal(inputs, masked)
    assert torch.equal(target, reference.eval()(unmasked).detach())
    assert not target.requires_grad and not any(p.requires_grad for p in prepare.generator.parameters())
    with pytest.raises(ValueError, match="no 'label'"):
        prepare({"image": masked})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Stage1ReconstructionTarget(generator(), tmp_path / "missing.pt")
    assert stage2_prepare_batch("input", None) is default_prepare_batch
    assert stage2_prepare_batch("stage1_reconstruction", prepare) is prepare
    with pytest.raises(ValueError, match="stage2_target must be one of"):
        stage2_prepare_batch("stage1", prepare)


def test_trainer_needs_a_discriminator_optimizer():
    generator = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(generator.parameters())
    with pytest.raises(ValueError, match="discriminator_optimizer"):
        VQGANTrainer("cpu", 1, [], generator, optimizer, discriminator=torch.nn.Linear(1, 1))


def test_trainer_applies_warmup_and_ramp(tiny_generator_def):
    torch.manual_seed(0)
    generator = ConfigParser({"generator": tiny_generator_def}).get_parsed_content("generator")
    discriminator = PatchDiscriminator(spatial_dims=3, channels=4, in_channels=1, num_layers_d=2)
    batches = [{"image": torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(i))} for i in range(5)]
    trainer = VQGANTrainer(
        "cpu",
        1,
        batches,
        generator,
        torch.optim.Adam(generator.parameters()),
        discriminator,
        torch.optim.Adam(discriminator.parameters()),
        discriminator_warmup=1,
        adversarial_ramp=2,
    )
    logged = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: logged.append(engine.state.output))
    trainer.run()
    assert [output["adv_scale"] for output in logged] == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert float(logged[0]["adv_weight"]) == 0.0 and float(logged[0]["loss_d"]) > 0  # warm-up: D trains alone
    assert all(float(output["adv_weight"]) > 0 and float(output["loss_adv"]) > 0 for output in logged[1:])
