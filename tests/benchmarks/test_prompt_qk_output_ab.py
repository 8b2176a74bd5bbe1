"""benchmarks/prompt_qk_output_ab.py: its two files differ in GroupQueryAttention's scores output
alone, and its memory probe runs each."""

import onnx
from benchmark_scripts import benchmark_module

from moe_compile.export.subgraphs import all_nodes


def test_the_files_differ_in_the_scores_output_and_the_probe_runs_them(tmp_path, monkeypatch):
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export import grouped_attention
    from tiny_models import save_tiny_model

    monkeypatch.setattr(grouped_attention, "MIN_PROMPT_KERNEL_TOKENS", 6)
    save_tiny_model("qwen2_moe", tmp_path / "model")
    ir = load_moe_model(tmp_path / "model")
    with benchmark_module("prompt_qk_output_ab") as ab:
        monkeypatch.setattr(ab, "LONGEST", 40)
        files, _ = ab.export_all(ir, tmp_path)
        peaks = ab.peak_memory(files)["peak_rss_mb_40_tokens"]
        outputs = {name: {len(node.output) for node in all_nodes(onnx.load(path, load_external_data=False).graph.node)
                          if node.op_type == "GroupQueryAttention"} for name, path in files.items()}
        assert outputs == {ab.WRITTEN: {4}, ab.DROPPED: {3}}
    assert set(peaks) == set(files) and all(peak > 0 for peak in peaks.values())
