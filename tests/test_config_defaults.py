"""Python defaults equal the config defaults: every numeric argument that configs/inference.json gives a bundle
component equals that component's own default, so code that builds a component directly behaves as the bundle does."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
# config parameters that set one call's argument by design, not a component's general default: the settings for a
# case given only its label map (no CBCT, so no soft-tissue step)
CALL_SPECIFIC = {"@label_map_only_segmentation_threshold", "@label_map_only_min_region_mm3"}


def _bundle_components(config, path: str = ""):
    """(path, target, raw arguments) of every ``bundle.*`` component in a raw config tree."""
    if isinstance(config, dict):
        target = config.get("_target_")
        if isinstance(target, str) and target.startswith("bundle."):
            yield path, target, config
        for key, value in config.items():
            yield from _bundle_components(value, f"{path}#{key}" if path else key)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from _bundle_components(value, f"{path}#{index}")


def test_numeric_config_values_equal_python_defaults():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    checked, mismatches = 0, []
    for path, target, arguments in _bundle_components(parser.get()):
        module, name = target.rsplit(".", 1)
        signature = inspect.signature(getattr(importlib.import_module(module), name))
        for argument in arguments:
            parameter = signature.parameters.get(argument)
            if parameter is None or str(arguments[argument]) in CALL_SPECIFIC:
                continue
            default = parameter.default
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                continue  # keys, names and switches are wiring, not tuned values
            checked += 1
            value = parser.get_parsed_content(f"{path}#{argument}")
            if value != default:
                mismatches.append(f"{target}({argument}): config {value!r}, Python default {default!r}")
    assert checked >= 8, checked
    assert not mismatches, "\n".join(mismatches)
