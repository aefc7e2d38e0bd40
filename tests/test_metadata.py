"""configs/metadata.json is valid against MONAI's schema (offline) and records the pinned environment."""

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "resources" / "meta_schema_20240725.json"


def _pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(m.groups() for m in (re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line) for line in lines) if m)


def test_metadata_verifies_against_the_monai_schema_offline():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            "configs/metadata.json",
            "--filepath",
            str(SCHEMA),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_metadata_schema_url_is_the_official_one():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["schema"].startswith("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/")
    assert meta["schema"].endswith(SCHEMA.name)


def test_metadata_versions_equal_the_pinned_and_installed_ones():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    pins = {name.lower(): pin for name, pin in _pins().items()}
    assert meta["monai_version"] == pins["monai"] == version("monai")
    assert meta["pytorch_version"] == pins["torch"] == version("torch").split("+")[0]
    assert meta["numpy_version"] == pins["numpy"] == version("numpy")
    recorded = {**meta["required_packages_version"], **meta["optional_packages_version"]}
    for name, pin in recorded.items():
        assert pins[name.lower()] == pin, name
        assert version(name) == pin, name
    # every pinned package is recorded somewhere in the metadata
    assert set(pins) - {"torch", "monai", "numpy"} == {name.lower() for name in recorded}


def test_versions_elsewhere_follow_the_metadata():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    app = (ROOT / "scripts" / "deploy_app" / "app.yaml").read_text()
    assert f"version: {meta['version']}" in app  # the MONAI Application Package carries the bundle's version
