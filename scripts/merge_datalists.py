"""Write one MONAI datalist that holds the entries of several, e.g. the healthy scans of two sites, or two phantom
sets, for one training run.

    python scripts/merge_datalists.py data/site_a/datalist.json data/site_b/datalist.json \\
        --output data/both_sites/datalist.json

Gap it fills: ``monai.data.load_decathlon_datalist`` reads one file with paths relative to one ``base_dir``, and the
training config (``configs/train.json#datalist``, ``#dataset_dir``) takes one datalist. Each input is read with
``load_decathlon_datalist`` itself, so a value is a path exactly when MONAI would treat it as one (``"image"`` always,
any other string when the file exists beside that datalist); the paths are then written relative to the output's
folder, so the merged datalist works with ``--dataset_dir`` set to that folder. Entries keep their other fields
(``"seed"``, ``"lesion"``, ...). Only the lists named by ``--keys`` are merged (default: training and validation;
``test`` as well if asked); every input must hold each of them (an empty list is fine).

Exit code 0 when written; 2, one line on stderr and nothing written, when an input is missing or not a datalist, the
same image appears twice, or the output exists without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.atomic_files import write_json_atomically  # noqa: E402

DEFAULT_KEYS = ("training", "validation")


def _read(datalist: Path, keys: Sequence[str]) -> dict:
    if not datalist.is_file():
        raise ValueError(f"{datalist}: no such file")
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{datalist}: not a readable JSON datalist ({error})") from None
    for key in keys:
        if not isinstance(content, dict) or not isinstance(content.get(key), list):
            raise ValueError(f"{datalist}: no '{key}' list")
        if not all(isinstance(entry, dict) and "image" in entry for entry in content[key]):
            raise ValueError(f"{datalist}: an entry of '{key}' has no 'image'")
    return content


def _resolved(datalist: Path, key: str, content: dict) -> list[dict]:
    """The ``key`` entries with paths resolved as MONAI's loader resolves them."""
    if not content[key]:
        return []
    return load_decathlon_datalist(datalist, is_segmentation=False, data_list_key=key, base_dir=datalist.parent)


def _relative(entry: dict, original: dict, output_dir: Path) -> dict:
    """The entry with every value that MONAI resolved to a path written relative to ``output_dir``."""
    rebased = {}
    for name, value in entry.items():
        if isinstance(value, str) and value != original.get(name):
            value = os.path.relpath(value, output_dir)
        rebased[name] = value
    return rebased


def merge(datalists: Sequence[Path], output: Path, keys: Sequence[str] = DEFAULT_KEYS, overwrite: bool = False) -> dict:
    """Merge the ``keys`` lists of ``datalists`` (in the given order) into ``output`` and return what was written.

    Raises:
        ValueError: an input is missing or not a datalist, an image appears twice, or ``output`` exists and
            ``overwrite`` is False; nothing is written then.
    """
    if output.is_dir():
        raise ValueError(f"{output}: is a folder; --output is the datalist file to write")
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: exists; pass --overwrite to replace it")
    output_dir = output.resolve().parent
    merged: dict = {key: [] for key in keys}
    seen: dict[str, Path] = {}
    for datalist in datalists:
        content = _read(datalist, keys)
        for key in keys:
            for entry, original in zip(_resolved(datalist, key, content), content[key]):
                image = os.path.realpath(entry["image"])
                if image in seen:
                    raise ValueError(f"{datalist}: image {original['image']} is also in {seen[image]}")
                seen[image] = datalist
                merged[key].append(_relative(entry, original, output_dir))
    merged["merged_from"] = [os.path.relpath(datalist.resolve(), output_dir) for datalist in datalists]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output, merged)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalists", type=Path, nargs="+", help="datalist JSON files to merge, in this order")
    parser.add_argument("--output", type=Path, required=True, help="merged datalist JSON to write")
    parser.add_argument(
        "--keys", nargs="+", default=list(DEFAULT_KEYS), help="lists to merge (default: training validation)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    try:
        merged = merge(args.datalists, args.output, args.keys, args.overwrite)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.output}: " + ", ".join(f"{len(merged[key])} {key}" for key in args.keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
