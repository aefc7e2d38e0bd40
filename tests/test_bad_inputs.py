"""Every row of docs/bad_inputs.md, one test each: the inference command on a bad (or awkward but valid) input.

A refused input ends in one stderr line that names the file and the problem, exit status 2, and no file written; a
valid one writes its case folder. The committed table must be what the command prints now
(``python scripts/check_bad_inputs.py --markdown docs/bad_inputs.md``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from check_bad_inputs import CASES, run_case, table_row  # noqa: E402

TABLE = (ROOT / "docs" / "bad_inputs.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_row(case, tmp_path):
    outcome = run_case(case, tmp_path)
    if case.expect:
        assert outcome["returncode"] == 2, outcome
        assert outcome["last_line"].startswith("error: ") and case.expect in outcome["last_line"], outcome
        assert outcome["written"] == [], outcome
    else:
        assert outcome["returncode"] == 0, outcome
        assert any(name.endswith("wound_segmentation.nii.gz") for name in outcome["written"]), outcome
    assert table_row(case, outcome, str(tmp_path)) in TABLE, "docs/bad_inputs.md is out of date"
