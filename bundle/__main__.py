"""``python -m bundle <command> ...``: MONAI's bundle command line, with errors reported in one line.

Takes exactly the arguments of ``python -m monai.bundle`` (``run``, ``verify_metadata``, ...) and runs the same code.
The one difference: when the run fails, instead of MONAI's traceback (a few hundred lines, with the cause in the
middle: MONAI re-raises a component's error inside its own), it prints the innermost error of the chain, which is the
one that names the file and the problem, as ``error: <message>`` on stderr, and exits with status 2::

    python -m bundle run --config_file configs/inference.json --input scan.nii.gz --output_dir out
    error: ValueError: scan.nii.gz: expected a 3D label map, got an image of shape (180, 180)

Gap filled: ``monai.bundle`` has no error-reporting mode; ``python -m monai.bundle`` keeps working unchanged.
"""

from __future__ import annotations

import runpy
import sys

from bundle.errors import innermost


def main() -> int:
    sys.argv[0] = "python -m bundle"
    try:
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and status 2
        cause = innermost(error)
        print(f"error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
