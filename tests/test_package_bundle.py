"""Model zoo readiness: large_files.yml records the shipped weights, and scripts/package_bundle.py builds a zip that
works as a bundle without them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from package_bundle import BUNDLE_ID  # noqa: E402
from package_model import record_in_large_files  # noqa: E402


def test_large_files_yml_records_the_shipped_weights_as_monai_reads_it():
    (entry,) = yaml.safe_load((ROOT / "large_files.yml").read_text())["large_files"]
    assert entry["path"] == "models/model.pt" and entry["hash_type"] == "sha256"
    assert entry["hash_val"] == (ROOT / "models" / "model.pt.sha256").read_text().split()[0]
    # with the file present and its hash right, MONAI's downloader verifies it and fetches nothing (CI is offline)
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_packaging_weights_rewrites_their_hash_and_keeps_the_comments(tmp_path):
    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    listing = tmp_path / "large_files.yml"
    listing.write_text(
        f"# kept\nlarge_files:\n- path: models/model.pt\n  url: u\n  hash_val: {'c' * 64}\n" "  hash_type: sha256\n"
    )
    assert record_in_large_files(weights, "a" * 64, listing)
    assert listing.read_text().startswith("# kept\n")
    assert yaml.safe_load(listing.read_text())["large_files"][0]["hash_val"] == "a" * 64
    assert not record_in_large_files(tmp_path / "other.pt", "b" * 64, listing)


@pytest.mark.slow
def test_package_bundle_builds_a_checked_zip_without_the_weights_and_refuses_to_overwrite(tmp_path):
    output = tmp_path / "bundle.zip"
    command = [sys.executable, "scripts/package_bundle.py", "--output", str(output)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "checked" in result.stdout
    names = set(zipfile.ZipFile(output).namelist())
    for required in (
        "configs/inference.json",
        "configs/metadata.json",
        "bundle/__init__.py",
        "docs/README.md",
        "docs/data_license.txt",
        "LICENSE",
        "large_files.yml",
        "models/model.pt.sha256",
    ):
        assert f"{BUNDLE_ID}/{required}" in names, required
    assert f"{BUNDLE_ID}/models/model.pt" not in names
    assert not any("__pycache__" in name or name.startswith(f"{BUNDLE_ID}/tests/") for name in names)
    before = output.read_bytes()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert output.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.zip"]  # no temporary file left behind
