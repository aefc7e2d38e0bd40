"""The batch benchmark: its table, and the modules whose import time it reports."""

import importlib

from scripts.benchmark_batch import bundle_modules, markdown_table


def test_table_gives_per_case_time_start_up_and_imports():
    result = {
        "cases": 20,
        "runs": [
            {
                "num_workers": 0,
                "one_case_seconds": 8.0,
                "all_cases_seconds": 65.0,
                "per_case_seconds": 3.0,
                "start_up_seconds": 5.0,
            }
        ],
        "import_seconds": {"torch": 1.05, "monai": 2.6, "bundle": 0.03},
    }
    table = markdown_table(result)
    assert "| data loader workers | 20 cases, s | per case, s | one case alone, s | start-up, s |" in table
    assert "| 0 | 65.0 | 3.00 | 8.0 | 5.0 |" in table
    assert "(median of 3): torch 1.05 s, then MONAI 2.60 s, then the bundle's modules 0.03 s" in table


def test_timed_bundle_modules_are_those_the_inference_config_instantiates():
    modules = bundle_modules()
    assert {"bundle.outputs", "bundle.report", "bundle.slicer_segmentation", "bundle.networks"} <= set(modules)
    for module in modules:
        importlib.import_module(module)
