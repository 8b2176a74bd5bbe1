"""build_engine's steps in order, on a CPU machine: TensorRT's Python API replaced by a small
recording fake (the only way to run this code without TensorRT; the real build is
tests/plugins/test_tensorrt_engine.py). What is tested is ours: what the builder asks of
TensorRT, what it writes and when, and what a failure leaves behind."""

import json
import sys
import types

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from moe_compile.errors import InvalidInput
from moe_compile.plugins.tensorrt.builder import build_engine, metadata_from_engine_name

METADATA = {"moe_compile.dtype": "fp16", "moe_compile.target": "tensorrt", "moe_compile.model_sha256": "ab" * 32,
            "moe_compile.top_k": '{"0": 2}'}


def _decoder_like(path):
    """input_ids [batch, sequence] -> a GroupedMoE-domain node -> logits (fp16), our metadata."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["hidden"], to=TensorProto.FLOAT16, name="cast"),
         helper.make_node("GroupedMoE", ["hidden"], ["logits"], name="moe_0", domain="moe_compile")], "main_graph",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch_size", "sequence_length"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("moe_compile", 1)])
    for key, value in METADATA.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


class FakeTensorRT:
    """Records what the builder does; `build_fails` / `parse_fails` choose a failure."""

    def __init__(self, build_fails=False, parse_fails=False):
        self.calls: dict = {"profile": {}, "cleared": [], "cache_in": None}
        calls = self.calls

        class ILogger:
            class Severity:
                INTERNAL_ERROR, ERROR, WARNING = "internal", "error", "warning"

            def __init__(self):
                pass

        class IProgressMonitor:
            def __init__(self):
                pass

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timings"

        class Config:
            progress_monitor = None

            def clear_flag(self, flag):
                calls["cleared"].append(flag)

            def add_optimization_profile(self, profile):
                calls["profiles_added"] = calls.get("profiles_added", 0) + 1
                calls.setdefault("profiles", []).append(dict(calls["profile"]))
                calls["profile"].clear()

            def create_timing_cache(self, data):
                calls["cache_in"] = bytes(data)
                self.cache = Cache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                return cache is self.cache and ignore_mismatch is False

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def set_shape(self, name, low, opt, high):
                calls["profile"][name] = (tuple(low), tuple(opt), tuple(high))

        class Network:
            name = ""

        class Error:
            def desc(self):
                return "No importer registered for op: GroupedMoE"

            def node_name(self):
                return "moe_0"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 1 if parse_fails else 0

            def parse_from_file(self, path):
                calls["parsed"] = onnx.load(path, load_external_data=False).graph.name
                return not parse_fails

            def get_error(self, index):
                return Error()

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                calls["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                monitor.phase_start("Building engine", None, 2)
                keep_going = monitor.step_complete("Building engine", 0)
                monitor.phase_finish("Building engine")
                if build_fails or not keep_going:
                    self.logger.log(ILogger.Severity.ERROR, "out of device memory\n  for tactic 7")
                    return None
                return b"ENGINE " + network.name.encode()

        class Engine:
            device_memory_size_v2 = 4096

            def __init__(self, data):
                self.data = data

            def create_engine_inspector(self):
                return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps(
                    {"Layers": [{"Name": "cast", "LayerType": "Cast"}, {"Name": "moe_0", "LayerType": "PluginV3"}]}))

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine(data)

        self.module = types.SimpleNamespace(
            __version__="10.8.0", ILogger=ILogger, IProgressMonitor=IProgressMonitor, Builder=Builder,
            OnnxParser=OnnxParser, Runtime=Runtime,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0), BuilderFlag=types.SimpleNamespace(TF32=7), ProfilingVerbosity=types.SimpleNamespace(DETAILED="detailed"),
            LayerInformationFormat=types.SimpleNamespace(JSON="json"))


@pytest.fixture
def fake(monkeypatch):
    """Install a FakeTensorRT, a visible 'GPU', and stand-ins for the plugin package's two
    entry points (the other half of #7) that record how they were called."""
    def install(**failures) -> FakeTensorRT:
        trt = FakeTensorRT(**failures)
        trt.expanded, trt.registered = [], []
        monkeypatch.setitem(sys.modules, "tensorrt", trt.module)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setitem(sys.modules, "moe_compile.plugins.tensorrt.expand", types.SimpleNamespace(
            expand_grouped_moe=lambda model, max_tokens: trt.expanded.append(max_tokens) or model))
        monkeypatch.setitem(sys.modules, "moe_compile.plugins.tensorrt.plugin", types.SimpleNamespace(
            register_plugins=lambda: trt.registered.append(True)))
        return trt
    return install


def test_build_writes_the_engine_and_the_timing_cache(fake, tmp_path):
    trt = fake()
    onnx_path = _decoder_like(tmp_path / "model.onnx")
    summary = build_engine(onnx_path, tmp_path / "engine.plan", precision="fp16", max_batch=4, max_seq=16,
                           timing_cache=tmp_path / "timing.cache", progress=False)
    engine = (tmp_path / "engine.plan").read_bytes()
    assert engine.startswith(b"ENGINE moe_compile:")
    assert metadata_from_engine_name(engine.decode()[len("ENGINE "):]) == METADATA  # validate --engine reads this
    assert trt.expanded == [4 * 16] and trt.registered == [True]  # the most tokens a call: a full batch of contexts
    assert trt.calls["network_flags"] == 1 << 0 and trt.calls["cleared"] == [7]  # strongly typed, no TF32
    # decode (one new token, tuned at a full batch), then prefill (every shape, tuned at one whole context)
    assert trt.calls["profiles"] == [{"input_ids": ((1, 1), (4, 1), (4, 1))}, {"input_ids": ((1, 1), (1, 16), (4, 16))}]
    assert summary.profiles["prefill"]["input_ids"] == {"min": [1, 1], "opt": [1, 16], "max": [4, 16]}
    assert trt.calls["cache_in"] == b"" and (tmp_path / "timing.cache").read_bytes() == b"+timings"
    assert (summary.layers, summary.device_memory_bytes) == (2, 4096)
    assert summary.plugin_layers == {"moe_compile::GroupedMoE": 1}
    assert summary.precision == "fp16" and summary.engine_bytes == len(engine) and summary.grouped_moe_nodes == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.plan", "model.onnx", "timing.cache"]

    trt = fake()
    build_engine(onnx_path, tmp_path / "engine.plan", max_batch=4, max_seq=16, timing_cache=tmp_path / "timing.cache",
                 progress=False)
    assert trt.calls["cache_in"] == b"+timings"  # the second build starts from the first one's timings


@pytest.mark.parametrize("failure, message", [
    ("build_fails", "TensorRT could not build {onnx}: out of device memory for tactic 7"),
    ("parse_fails", "TensorRT's ONNX parser cannot read {onnx} at node 'moe_0': No importer registered for op"),
])
def test_a_failed_build_writes_nothing(failure, message, fake, tmp_path):
    fake(**{failure: True})
    onnx_path = _decoder_like(tmp_path / "model.onnx")
    (tmp_path / "engine.plan").write_bytes(b"the previous engine")
    with pytest.raises(InvalidInput) as failed:
        build_engine(onnx_path, tmp_path / "engine.plan", timing_cache=tmp_path / "timing.cache", progress=False)
    assert message.format(onnx=onnx_path) in str(failed.value) and "\n" not in str(failed.value)
    assert (tmp_path / "engine.plan").read_bytes() == b"the previous engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.plan", "model.onnx"]  # no cache, no staging


def test_interrupt_during_the_build_cancels_it(fake, tmp_path, monkeypatch):
    from moe_compile import interrupts

    fake()
    monkeypatch.setattr(interrupts, "_received", ["SIGINT"])  # as if Ctrl-C came during the build
    with pytest.raises(KeyboardInterrupt):
        build_engine(_decoder_like(tmp_path / "model.onnx"), tmp_path / "engine.plan", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_summary_table_groups_the_cache_inputs():
    from rich.console import Console

    from moe_compile.commands.build import summary_table

    cache = {"min": [1, 2, 0, 8], "opt": [4, 2, 31, 8], "max": [4, 2, 63, 8]}
    summary = {"onnx": "m.onnx", "engine": "e.plan", "precision": "bf16", "tensorrt": "10.8.0", "layers": 40,
               "plugin_layers": {"moe_compile::GroupedMoERoute": 2}, "grouped_moe_nodes": 2,
               "device_memory_bytes": 3 * 2**20, "engine_bytes": 2**21, "build_seconds": 12.0, "timing_cache": None,
               "profiles": {"prefill": {"input_ids": {"min": [1, 1], "opt": [4, 1], "max": [4, 64]},
                                        "past_key_values.0.key": cache, "past_key_values.0.value": cache}}}
    console = Console(record=True, width=200)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "e.plan: TensorRT 10.8.0, bf16" in text and "moe_compile::GroupedMoERoute x2" in text
    assert "3.0 MiB" in text and "past_key_values.* (2)" in text and "past_key_values.0.key" not in text


def test_the_runner_takes_the_first_profile_that_holds_the_inputs():
    from moe_compile.validate.runners.trt import profile_for

    decode = {"input_ids": [(1, 1), (4, 1), (4, 1)], "past": [(1, 0), (4, 7), (4, 15)]}
    prefill = {"input_ids": [(1, 1), (1, 16), (4, 16)], "past": [(1, 0), (1, 0), (4, 15)]}
    assert profile_for({"input_ids": (3, 1), "past": (3, 9)}, [decode, prefill]) == 0
    assert profile_for({"input_ids": (2, 5), "past": (2, 0)}, [decode, prefill]) == 1
    assert profile_for({"input_ids": (5, 1), "past": (5, 0)}, [decode, prefill]) is None
