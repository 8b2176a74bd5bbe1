"""benchmarks/prompt_chunks_ab.py: the files it compares differ in the chunks alone, and its memory
probe runs each one."""

import onnx
from benchmark_scripts import benchmark_module

from moe_compile.export.subgraphs import all_nodes


def test_the_files_differ_in_rows_a_call_and_the_probe_runs_them(tmp_path, monkeypatch):
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export import grouped_attention
    from tiny_models import save_tiny_model

    monkeypatch.setattr(grouped_attention, "MIN_PROMPT_KERNEL_TOKENS", 6)
    save_tiny_model("qwen2_moe", tmp_path / "model")
    with benchmark_module("prompt_chunks_ab") as ab:
        monkeypatch.setattr(ab, "LONGEST", 40)
        monkeypatch.setattr(ab, "ROWS", (4,))
        files, exports = ab.export_all(load_moe_model(tmp_path / "model"), tmp_path)
        peaks = ab.peak_memory(files)["peak_rss_mb_40_tokens"]
    metadata = {name: {entry.key: entry.value for entry in onnx.load(path, load_external_data=False).metadata_props}
                for name, path in files.items()}
    loops = {name: sum(node.op_type == "Loop" for node in all_nodes(onnx.load(path, load_external_data=False).graph.node))
             for name, path in files.items()}
    layers = load_moe_model(tmp_path / "model").config.num_hidden_layers
    assert loops == {"one call per prompt": 0, "4 rows a call": 2 * layers}  # per layer, sequences around chunks
    assert metadata["4 rows a call"]["moe_compile.prompt_attention"].endswith("4 rows a call")
    assert exports == {"default_rows": 128}
    assert set(peaks) == set(files) and all(peak > 0 for peak in peaks.values())
