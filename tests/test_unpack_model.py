"""scripts/unpack_model.py: packaged weights -> the stage-1 and stage-2 checkpoints that a stage-2 fine-tune reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.trainer import init_stage2
from scripts.package_model import package
from scripts.unpack_model import TRAINING_CONFIGS, unpack

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "model.pt"


def _training_networks():
    parser = ConfigParser()
    parser.read_config([str(ROOT / name) for name in TRAINING_CONFIGS])
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("discriminator_def")


def test_unpacking_then_packaging_gives_the_shipped_weights_back(tmp_path):
    stage1, stage2_start = unpack(SHIPPED, tmp_path / "unpacked", TRAINING_CONFIGS)
    package(stage1, [stage2_start], tmp_path / "model.pt", "generator", False, ROOT / "configs" / "inference.json")
    shipped = torch.load(SHIPPED, weights_only=True)
    repacked = torch.load(tmp_path / "model.pt", weights_only=True)
    assert repacked.keys() == shipped.keys()
    assert all(torch.equal(repacked[name], shipped[name]) for name in shipped)


def test_stage2_starts_from_the_shipped_stage2_encoder_with_a_seeded_discriminator(tmp_path):
    _, stage2_start = unpack(SHIPPED, tmp_path / "a", TRAINING_CONFIGS, seed=3)
    _, again = unpack(SHIPPED, tmp_path / "b", TRAINING_CONFIGS, seed=3)
    first, second = torch.load(stage2_start, weights_only=True), torch.load(again, weights_only=True)
    assert all(torch.equal(first["discriminator"][k], second["discriminator"][k]) for k in first["discriminator"])
    generator, discriminator = _training_networks()
    init_stage2(generator, stage2_start, discriminator, output_dir=tmp_path / "stage2")
    shipped = torch.load(SHIPPED, weights_only=True)
    for name, tensor in generator.encoder.state_dict().items():
        assert torch.equal(tensor, shipped[f"encoder2.{name}"]), name
    assert not any(parameter.requires_grad for parameter in generator.decoder.parameters())
    assert all(parameter.requires_grad for parameter in generator.encoder.parameters())


def test_existing_outputs_are_kept_and_bad_weights_named(tmp_path):
    output = tmp_path / "unpacked"
    output.mkdir()
    (output / "stage1.pt").write_text("the user's file")
    with pytest.raises(FileExistsError, match="stage1.pt: exists"):
        unpack(SHIPPED, output, TRAINING_CONFIGS)
    assert (output / "stage1.pt").read_text() == "the user's file"
    assert sorted(path.name for path in output.iterdir()) == ["stage1.pt"]
    altered = tmp_path / "model.pt"
    shutil.copy(SHIPPED, altered)
    shutil.copy(SHIPPED.with_suffix(".pt.sha256"), tmp_path / "model.pt.sha256")
    with altered.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="model.pt"):
        unpack(altered, tmp_path / "elsewhere", TRAINING_CONFIGS)
    assert not (tmp_path / "elsewhere").exists()
