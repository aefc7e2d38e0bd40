"""Checksummed weights: the inference network refuses a ``model.pt`` whose sha256 differs from the one recorded
beside it (``model.pt.sha256``, the ``sha256sum`` format), so a truncated download or a mixed-up file fails loudly.

MONAI's ``CheckpointLoader`` loads without any integrity check and ``monai.apps.utils.check_hash`` only returns a
bool; this module joins the two with an error that names the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch

from bundle.atomic_files import write_text_atomically


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(weights: str | os.PathLike) -> Path:
    return Path(f"{weights}.sha256")


def write_checksum(weights: str | os.PathLike) -> str:
    """Record the sha256 of ``weights`` in ``<weights>.sha256`` and return it."""
    value = sha256_of(weights)
    write_text_atomically(checksum_path(weights), f"{value}  {Path(weights).name}\n")
    return value


def verify_checksum(weights: str | os.PathLike) -> str:
    """Return the sha256 of ``weights`` after checking it against ``<weights>.sha256``.

    Raises ``FileNotFoundError`` when either file is missing and ``ValueError`` on a mismatch.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file not found")
    recorded_file = checksum_path(weights)
    if not recorded_file.is_file():
        raise FileNotFoundError(f"{recorded_file}: checksum file not found (expected beside {weights.name})")
    recorded = recorded_file.read_text().split()[0].lower() if recorded_file.read_text().strip() else ""
    actual = sha256_of(weights)
    if actual != recorded:
        raise ValueError(f"{weights}: sha256 {actual} does not match {recorded or '<empty>'} in {recorded_file.name}")
    return actual


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu"):
    """``torch.load(path, weights_only=True)``, with a one-line error naming the file when it is refused.

    ``weights_only`` unpickles tensors, numbers, strings and containers only, so a file that would run code when
    unpickled (a pickle ``__reduce__`` calling any function) is refused before that code runs, checksum or not;
    PyTorch's own message for it is a page long. Raises ``ValueError`` for such a file and for one that is not a
    checkpoint.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path}: refused: the checkpoint holds objects other than tensors and plain containers, which could run "
            "code when loaded (only weights_only loading is allowed)"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]})") from None


def load_verified_weights(network: torch.nn.Module, weights: str | os.PathLike) -> torch.nn.Module:
    """Load a state dict into ``network`` after :func:`verify_checksum`, with :func:`load_checkpoint`."""
    verify_checksum(weights)
    state = load_checkpoint(weights)
    network.load_state_dict(state)
    return network
