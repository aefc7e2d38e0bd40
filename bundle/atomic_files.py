"""Text and JSON files replaced atomically: a reader, or a run killed while writing, never sees half a file.

The bundle's results are files that other steps read back: ``metrics.json`` of the evaluation, the datalists of
``scripts/prepare_dataset.py``, the benchmark and tuning JSON files and the Markdown tables under ``docs/``. MONAI's
writers (``SaveImaged`` and the image writers behind it) write images straight to their final name and it has no
helper for small text files, so a plain ``Path.write_text`` would leave a truncated file, or a truncated copy of a
good earlier one, when a run is killed or the disk fills. Here the text goes to a hidden ``.<name>.<random>.partial``
file beside the target, which is renamed over it only once complete (``os.replace``, atomic within one file system);
on failure the temporary file is removed and the old file is left as it was. A run killed while writing leaves the
hidden file, which :func:`bundle.outputs.is_temporary` recognises.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def hidden_name(parent: Path, stem: str, suffix: str) -> Path:
    """``parent/.<stem>.<random>.<suffix>``: a hidden temporary name that no other run picks."""
    return parent / f".{stem}.{secrets.token_hex(4)}{suffix}"


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a hidden ``.<name>.<random>.partial`` file beside ``path``, then rename it to ``path``.

    The file gets the permissions of any new file under the current umask (not the 0600 of ``tempfile.mkstemp``).
    On any failure the temporary file is removed and an existing ``path`` is left unchanged. Returns ``path``.
    """
    path = Path(path)
    while True:
        temporary = hidden_name(path.parent, path.name, ".partial")
        try:
            stream = open(temporary, "x", encoding="utf-8")
            break
        except FileExistsError:
            continue
    try:
        with stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_json_atomically(path: str | os.PathLike, content: Any, indent: int | None = 4) -> Path:
    """Write ``content`` as JSON (``indent`` spaces, one trailing newline) through :func:`write_text_atomically`.

    Content that JSON cannot serialise raises ``TypeError`` before any file is touched. Returns ``path``.
    """
    return write_text_atomically(path, json.dumps(content, indent=indent) + "\n")
