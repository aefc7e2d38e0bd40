"""Build the zip a user shares through the MONAI model zoo, then check it as a recipient would use it.

The zip holds one folder, ``<bundle id>/``, with the configs, the ``bundle`` package, the phantom generator and its
shape bank, the scripts, the docs (model card, licences, embedded sample), ``LICENSE``, ``requirements.txt`` and
``large_files.yml``. The files ``large_files.yml`` lists (the weights) stay out: the zoo fetches them with
``python -m monai.bundle download_large_files``; their ``.sha256`` records go in, so the bundle verifies what it loads.

Checks, on the finished zip: every config is valid JSON, the metadata passes MONAI's schema (offline copy), no listed
large file is inside, and the extracted bundle, given the weights named by ``large_files.yml`` (taken from this
checkout, hash-checked), passes ``verify_net_in_out`` and runs inference on its embedded sample from another folder.

    python scripts/package_bundle.py [--output dist/<bundle id>_v<version>.zip] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.weights import sha256_of  # noqa: E402

BUNDLE_ID = "jaw_onj_masked_vqgan"
SCHEMA = ROOT / "tests" / "resources" / "meta_schema_20240725.json"
# what a recipient needs: runtime, training, data generation, documentation; tests and run outputs stay home
INCLUDED = (
    "LICENSE",
    "README.md",
    "requirements.txt",
    "large_files.yml",
    "configs",
    "bundle",
    "jaw_phantoms",
    "scripts",
    "docs",
    "models",
)
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}


def large_files(root: Path) -> list[dict]:
    return yaml.safe_load((root / "large_files.yml").read_text())["large_files"]


def bundle_members(root: Path) -> list[Path]:
    """Files of the shared bundle, relative to ``root``: :data:`INCLUDED`, less caches and the large files."""
    left_out = {Path(entry["path"]) for entry in large_files(root)}
    members = []
    for name in INCLUDED:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: part of the bundle, missing")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(root)
            if SKIPPED_PARTS.isdisjoint(relative.parts) and file.suffix != ".pyc" and relative not in left_out:
                members.append(relative)
    return members


def write_zip(root: Path, destination: Path) -> list[Path]:
    members = bundle_members(root)
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in members:
            archive.write(root / relative, f"{BUNDLE_ID}/{relative.as_posix()}")
    return members


def _run(command: list[str], cwd: Path, what: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed in the extracted bundle:\n{(result.stdout + result.stderr)[-3000:]}")


def check_zip(archive_path: Path, weights_root: Path = ROOT) -> None:
    """Raise with the reason when the zip is not a working bundle (see the module docstring)."""
    with zipfile.ZipFile(archive_path) as archive:
        names = set(archive.namelist())
        if any(not name.startswith(f"{BUNDLE_ID}/") for name in names):
            raise ValueError(f"{archive_path}: every member must be under {BUNDLE_ID}/")
        with tempfile.TemporaryDirectory() as scratch:
            archive.extractall(scratch)
            bundle_root = Path(scratch) / BUNDLE_ID
            for config in sorted((bundle_root / "configs").glob("*.json")):
                try:
                    json.loads(config.read_text())
                except json.JSONDecodeError as error:
                    raise ValueError(f"{archive_path}: configs/{config.name} is not valid JSON ({error})") from error
            for entry in large_files(bundle_root):
                if f"{BUNDLE_ID}/{entry['path']}" in names:
                    raise ValueError(f"{archive_path}: {entry['path']} is a large file and must not be in the zip")
                source = weights_root / entry["path"]
                if not source.is_file() or sha256_of(source) != entry["hash_val"]:
                    raise ValueError(f"{source}: missing or not the file large_files.yml records ({entry['hash_val']})")
                shutil.copy2(source, bundle_root / entry["path"])
            python = sys.executable
            _run(
                [
                    python,
                    "-m",
                    "monai.bundle",
                    "verify_metadata",
                    "--meta_file",
                    "configs/metadata.json",
                    "--filepath",
                    str(SCHEMA),
                ],
                bundle_root,
                "verify_metadata",
            )
            _run(
                [
                    python,
                    "-m",
                    "monai.bundle",
                    "verify_net_in_out",
                    "network_def",
                    "--meta_file",
                    "configs/metadata.json",
                    "--config_file",
                    "configs/inference.json",
                    "--device",
                    "cpu",
                ],
                bundle_root,
                "verify_net_in_out",
            )
            elsewhere = Path(scratch) / "elsewhere"
            elsewhere.mkdir()
            _run(
                [
                    python,
                    "-m",
                    "monai.bundle",
                    "run",
                    "--config_file",
                    str(bundle_root / "configs" / "inference.json"),
                    "--bundle_root",
                    str(bundle_root),
                    "--output_dir",
                    str(elsewhere / "out"),
                ],
                elsewhere,
                "inference on the embedded sample",
            )
            if not list((elsewhere / "out").glob("*/wound_segmentation.nii.gz")):
                raise ValueError(f"{archive_path}: inference on the embedded sample wrote no wound segmentation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    version = json.loads((ROOT / "configs" / "metadata.json").read_text())["version"]
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / f"{BUNDLE_ID}_v{version}.zip")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    parser.add_argument("--no_check", action="store_true", help="build only, skip the checks")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        print(f"package_bundle.py: {args.output}: exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{args.output.name}.", suffix=".zip", dir=args.output.parent)
    os.close(handle)
    try:  # built and checked under a temporary name: a failure leaves nothing, and an old zip only on failure
        members = write_zip(ROOT, Path(temporary))
        if not args.no_check:
            check_zip(Path(temporary))
        os.chmod(temporary, 0o644)
        os.replace(temporary, args.output)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"package_bundle.py: {error}", file=sys.stderr)
        return 2
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    size_mb = args.output.stat().st_size / 2**20
    print(f"{args.output}: {len(members)} files, {size_mb:.1f} MiB" + ("" if args.no_check else ", checked"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
