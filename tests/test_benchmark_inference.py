"""The inference benchmark's Markdown table: every stage and the speed-ups of the result it is given."""

from scripts.benchmark_inference import markdown_table


def test_table_lists_every_stage_and_the_speedups():
    result = {
        "median_seconds": {
            "load_preprocess": 0.05,
            "reconstructions": 1.5,
            "postprocess": 0.25,
            "invert_write": 0.2,
            "total": 2.0,
            "naive_reconstructions": 4.5,
        },
        "naive_pipeline_seconds": 5.0,
        "speedup_reconstructions": 3.0,
        "speedup_pipeline": 2.5,
        "sliding_window": {"roi_size": [48, 48, 48], "overlap": 0.125, "sw_batch_size": 8},
        "weights": "models/model.pt",
        "threads": 2,
        "peak_rss_gb": 0.8,
        "repeats": 3,
    }
    table = markdown_table(result)
    assert "| both reconstructions (windows of 48^3, overlap 0.125) | 1.50 |" in table
    assert "| naive peer, whole pipeline | 5.00 |" in table
    assert "reconstructions x3.00, whole pipeline x2.50" in table
