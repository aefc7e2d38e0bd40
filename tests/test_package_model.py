"""scripts/package_model.py: two training checkpoints -> one AnomalyDetector state dict with its checksum."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from bundle.networks import AnomalyDetector, VQGANGenerator
from bundle.weights import verify_checksum

ROOT = Path(__file__).resolve().parents[1]
TINY = {"channels": [4, 8], "num_embeddings": 16, "embedding_dim": 4}


def _package(tmp_path: Path, stage1: dict, stage2: dict, *extra: str) -> subprocess.CompletedProcess:
    config = tmp_path / "generator.json"
    config.write_text(json.dumps({"generator_def": {"_target_": "bundle.networks.VQGANGenerator", **TINY}}))
    torch.save({"generator": stage1}, tmp_path / "stage1.pt")
    torch.save({"generator": stage2}, tmp_path / "stage2.pt")
    command = [
        sys.executable,
        "scripts/package_model.py",
        "--stage1",
        str(tmp_path / "stage1.pt"),
        "--stage2",
        str(tmp_path / "stage2.pt"),
        "--output",
        str(tmp_path / "model.pt"),
        "--config_file",
        str(config),
    ]
    return subprocess.run(command + list(extra), cwd=ROOT, capture_output=True, text=True, timeout=300)


def _stages() -> tuple[VQGANGenerator, VQGANGenerator]:
    torch.manual_seed(0)
    stage1 = VQGANGenerator(**TINY)
    stage2 = VQGANGenerator(**TINY)
    stage2.quantizer.load_state_dict(stage1.quantizer.state_dict())
    stage2.decoder.load_state_dict(stage1.decoder.state_dict())
    return stage1, stage2


def test_packaged_detector_holds_each_stage_encoder(tmp_path):
    stage1, stage2 = _stages()
    result = _package(tmp_path, stage1.state_dict(), stage2.state_dict())
    assert result.returncode == 0, result.stderr
    verify_checksum(tmp_path / "model.pt")
    detector = AnomalyDetector(VQGANGenerator(**TINY))
    detector.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    for name, tensor in stage1.encoder.state_dict().items():
        assert torch.equal(detector.encoder1.state_dict()[name], tensor), name
        assert torch.equal(detector.encoder2.state_dict()[name], stage2.encoder.state_dict()[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(detector.encoder1.parameters(), detector.encoder2.parameters()))


def test_package_refuses_a_stage2_with_another_decoder_and_an_existing_output(tmp_path):
    stage1, stage2 = _stages()
    with torch.no_grad():
        next(stage2.decoder.parameters()).add_(1.0)
    result = _package(tmp_path, stage1.state_dict(), stage2.state_dict())
    assert result.returncode == 2 and "differs from stage 1" in result.stderr
    assert not (tmp_path / "model.pt").exists()
    (tmp_path / "model.pt").write_bytes(b"the user's file")
    result = _package(tmp_path, stage1.state_dict(), stage1.state_dict())
    assert result.returncode == 2 and "exists" in result.stderr
    assert (tmp_path / "model.pt").read_bytes() == b"the user's file"


def test_several_stage2_checkpoints_give_their_averaged_encoder(tmp_path):
    stage1, stage2 = _stages()
    later = VQGANGenerator(**TINY)
    later.load_state_dict(stage2.state_dict())
    with torch.no_grad():
        for parameter in later.encoder.parameters():
            parameter.add_(torch.randn_like(parameter))
    torch.save({"generator": later.state_dict()}, tmp_path / "later.pt")
    result = _package(tmp_path, stage1.state_dict(), stage2.state_dict())
    assert result.returncode == 0, result.stderr
    command = [sys.executable, "scripts/package_model.py", "--stage1", str(tmp_path / "stage1.pt"), "--stage2"]
    command += [str(tmp_path / "stage2.pt"), str(tmp_path / "later.pt"), "--output", str(tmp_path / "averaged.pt")]
    command += ["--config_file", str(tmp_path / "generator.json")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    detector = AnomalyDetector(VQGANGenerator(**TINY))
    detector.load_state_dict(torch.load(tmp_path / "averaged.pt", weights_only=True))
    for name, tensor in detector.encoder2.state_dict().items():
        first, second = stage2.encoder.state_dict()[name], later.encoder.state_dict()[name]
        expected = (first + second) / 2 if tensor.is_floating_point() else second
        torch.testing.assert_close(tensor, expected, msg=name)
    for name, tensor in detector.encoder1.state_dict().items():
        assert torch.equal(tensor, stage1.encoder.state_dict()[name]), name
    for name, tensor in detector.decoder.state_dict().items():
        assert torch.equal(tensor, stage1.decoder.state_dict()[name]), name
