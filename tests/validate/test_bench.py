"""`moe-compile bench`: the timing harness, the report it writes, and its refusals."""

import json
import shutil

import numpy as np
import pytest
import torch

from moe_compile.cli import main
from moe_compile.commands import bench as bench_command
from moe_compile.compiler.lexi.cost import ActiveExperts
from moe_compile.compiler.lexi.plan import Budget, dumps, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.compiler.compiled import compiled_model
from moe_compile.export.exporter import export_onnx
from moe_compile.validate.backends import TopKSetting
from moe_compile.validate.bench import add_speedups, in_rounds, moe_time_share, pooled_rounds
from moe_compile.validate.generation import decoder_feed
from moe_compile.validate.memory import PeakMemory
from moe_compile.validate.runners import TorchRunner
from moe_compile.validate.timing import Spread, time_decode, time_prefill


class CountingRunner:
    """A runner that returns fixed logits and records each call's input length."""

    def __init__(self, vocab=5):
        self.calls, self.vocab = [], vocab

    def infer(self, feed):
        batch, step = feed["input_ids"].shape
        self.calls.append(step)
        past = feed["past_key_values.0.key"]
        present = np.zeros((batch, 1, past.shape[2] + step, 2), dtype=np.float32)
        return {"logits": np.zeros((batch, step, self.vocab), dtype=np.float32),
                "present.0.key": present, "present.0.value": present}


def _empty(batch):
    return [np.zeros((batch, 1, 0, 2), dtype=np.float32)] * 2


def test_spread_inverse_turns_seconds_into_rates():
    seconds = Spread.of([0.5, 1.0, 2.0])
    rate = seconds.inverse(10.0)
    assert (rate.median, rate.min, rate.max, rate.runs) == (10.0, 5.0, 20.0, 3)
    assert seconds.scaled(1e3).median == 1000.0


def test_timing_loops_run_what_they_report():
    runner = CountingRunner()
    prefill = time_prefill(runner, np.zeros((2, 7), dtype=np.int64), _empty(2), repeats=4)
    assert runner.calls == [7] * 5 and prefill.tokens == 14 and prefill.seconds.runs == 4
    runner.calls.clear()
    decode = time_decode(runner, np.zeros((2, 3), dtype=np.int64), _empty(2), steps=6, repeats=2)
    assert runner.calls == ([3] + [1] * 6) * 3  # a warm-up run, then two timed ones
    assert decode.tokens == 12 and len(decode.step_seconds) == 12 and decode.run_seconds.runs == 2
    assert decode.step_percentile(50) <= decode.step_percentile(99)


def test_peak_memory_sees_an_allocation_that_is_freed_before_the_end():
    with PeakMemory() as peak:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
        import time

        time.sleep(0.05)
        del block
    assert peak.host_bytes is not None and peak.host_bytes >= 48 * 2**20
    assert peak.host_anon_bytes >= 48 * 2**20  # an allocation is anonymous memory


def test_peak_memory_does_not_sample_while_paused():
    """bench times with the sampler stopped (its wake-ups cost a 2-core machine ~10 % of tokens/s):
    a block allocated and freed inside `paused()` is not seen; one held past it is, on exit."""
    import time

    with PeakMemory() as peak:
        with peak.paused():
            assert not peak._sampling.running
            block = np.ones(64 * 2**20, dtype=np.uint8)
            time.sleep(0.05)
            del block
        assert peak._sampling.running
        peak.update()
        assert peak.host_anon_bytes < 32 * 2**20
        with peak.paused():
            held = np.ones(64 * 2**20, dtype=np.uint8)
    assert peak.host_anon_bytes >= 48 * 2**20 and held.size


def test_the_commands_anonymous_peak_sampler_stops_while_paused():
    """`moe-compile bench` times with the command's own sampler (process_memory) stopped as well;
    it runs again after, and the peak it keeps counts what was resident around the pause."""
    from moe_compile.process_memory import AnonPeakSampler

    sampler = AnonPeakSampler().start()
    with sampler.paused():
        assert not sampler.running
        held = np.ones(32 * 2**20, dtype=np.uint8)
    assert sampler.running and sampler.peak_bytes >= held.nbytes


def test_peak_memory_tells_a_mapped_file_from_anonymous_memory(tmp_path):
    """A file read through a mapping grows the resident set, not its anonymous part (a checkpoint
    loaded by safetensors); an allocation grows both (the test above)."""
    import mmap
    import time

    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (64 << 20))
    with PeakMemory() as peak, path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[offset] for offset in range(0, len(mapped), 4096)) == (64 << 20) // 4096
        time.sleep(0.05)
    assert peak.host_bytes >= 48 << 20 and peak.host_anon_bytes < 16 << 20


def test_moe_share_is_the_time_inside_the_moe_blocks(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    runner = TorchRunner(compiled_model(ir)[0])
    past = [np.zeros((2, t.shape[1], 0, t.shape[3]), dtype=np.float32)
            for t in (torch.zeros(1, ir.config.num_key_value_heads, 0,
                                  ir.config.hidden_size // ir.config.num_attention_heads),) * (2 * ir.config.num_hidden_layers)]
    feed = decoder_feed(np.zeros((2, 5), dtype=np.int64), dict(zip(runner.output_names[1:], past)), 0)
    feed = {name.replace("present", "past_key_values"): value for name, value in feed.items()}
    share, seconds = moe_time_share(runner, feed, [spec.module_path for spec in ir.layers])
    assert 0.0 < share < 1.0 and seconds > 0.0
    with pytest.raises(AttributeError):  # a path that is not a module is an error, not a silent 0
        moe_time_share(runner, feed, ["model.layers.0.no_such_block"])


def _row(backend, setting, prefill, decode):
    return {"backend": backend, "setting": setting, "batch": 1, "prompt": 8,
            "prefill_tokens_per_s": {"median": prefill}, "decode_tokens_per_s": {"median": decode}}


def test_cache_shapes_come_from_the_skeleton_as_from_the_loaded_model(tiny_model_dirs):
    """bench's runners get their empty caches from a pass of the weightless skeleton, which
    reads no weight: the same shapes as the loaded model's, for every architecture."""
    from moe_compile.compiler.loader import load_causal_lm
    from moe_compile.export.decoder import empty_past
    from moe_compile.validate.backends import BenchModel

    for model_type, folder in tiny_model_dirs.items():
        ir = load_moe_model(folder)
        loaded = [tuple(t.shape) for t in empty_past(load_causal_lm(ir), 3, torch.float32)]
        bench_model = BenchModel(ir, "fp32", threads=1)
        assert [past.shape for past in bench_model.empty_past(3)] == loaded, model_type
        assert all(past.dtype == np.float32 and past.shape[2] == 0 for past in bench_model.empty_past(3))
        assert [past.shape[2] for past in bench_model.empty_past(2, 5)] == [5] * len(loaded)


def test_speedups_are_against_the_baseline_and_the_base_top_k():
    rows = [_row("transformers", "base", 100, 10), _row("onnxruntime-cpu", "base", 200, 40),
            _row("onnxruntime-cpu", "plan", 300, 60)]
    add_speedups(rows)
    assert rows[1]["vs_transformers"] == {"prefill": 2.0, "decode": 4.0} and rows[1]["vs_base_top_k"] is None
    assert rows[2]["vs_transformers"] == {"prefill": 3.0, "decode": 6.0}
    assert rows[2]["vs_base_top_k"] == {"prefill": 1.5, "decode": 1.5}


def _timed_row(backend, round_number, prefill, decode, peak):
    spread = {"median": 0.0, "min": 0.0, "max": 0.0, "runs": 1}
    return {"backend": backend, "setting": "base", "batch": 1, "prompt": 8, "round": round_number,
            "prefill_tokens_per_s": {"median": prefill, "min": prefill - 1, "max": prefill + 1, "runs": 3},
            "decode_tokens_per_s": {"median": decode, "min": decode - 1, "max": decode + 1, "runs": 3},
            "ttft_ms": spread, "step_ms": {"p50": 1.0, "p99": 2.0},
            "peak_host_mb": peak, "peak_host_anon_mb": None, "peak_device_mb": None}


def test_rounds_alternate_the_order_and_pair_each_ratio_within_its_round():
    """A slow minute for one backend must not decide a speed-up: each round's ratio is taken
    against the baseline of the same round, and the pooled speed-up is their median."""
    assert list(in_rounds(["a", "b", "c"], 3)) == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"),
                                                   (2, "a"), (2, "b"), (2, "c")]
    # eager slow in round 1 (50 tokens/s), ONNX Runtime steady at 200: pooled rates would say 2.0x
    # (200 over eager's median of 100), the rounds' own ratios say 2.0, 4.0 and 1.9 -> 2.0
    rows = [_timed_row("transformers", 0, 1000, 100, 300), _timed_row("onnxruntime-cpu", 0, 1500, 200, 200),
            _timed_row("onnxruntime-cpu", 1, 1500, 200, 250), _timed_row("transformers", 1, 900, 50, 310),
            _timed_row("transformers", 2, 1100, 105, 290), _timed_row("onnxruntime-cpu", 2, 1650, 199.5, 240)]
    add_speedups(rows)
    assert [row["vs_transformers"]["decode"] for row in rows] == [1.0, 2.0, 4.0, 1.0, 1.0, 1.9]
    eager, ort = pooled_rounds(rows)
    assert ort["backend"] == "onnxruntime-cpu" and ort["rounds"] == 3 and "round" not in ort
    assert ort["vs_transformers"] == {"prefill": 1.5, "decode": 2.0}
    assert ort["vs_transformers_range"] == {"prefill": [1.5, 1.667], "decode": [1.9, 4.0]}
    assert ort["decode_tokens_per_s"] == {"median": 200, "min": 198.5, "max": 201, "runs": 9}
    assert ort["peak_host_mb"] == 250 and ort["peak_host_anon_mb"] is None
    assert eager["vs_transformers"] == {"prefill": 1.0, "decode": 1.0} and eager["vs_base_top_k"] is None
    assert eager["decode_tokens_per_s"]["median"] == 100


@pytest.fixture(scope="module")
def bench_exports(tmp_path_factory):
    """bench's own export (commands/bench.export_for_onnxruntime), each setting exported once for
    this module: later runs get a copy of the first run's real export of the same model, dtype,
    top-k and quantization (an export of a tiny model takes ~30 s, most of it torch.export)."""
    cache = tmp_path_factory.mktemp("bench_exports")
    real = bench_command.export_for_onnxruntime

    def export(ir, out, dtype, setting):
        quantize = setting.quantize.metadata().replace("/", "_") if setting.quantize else "none"
        key = "-".join([ir.fingerprint["sha256"][:16], dtype, quantize,
                        *(f"{layer}_{k}" for layer, k in sorted(setting.top_k.items()))])
        folder = cache / key
        if not folder.exists():
            staging = cache / f".{key}"
            staging.mkdir()
            real(ir, staging / out.name, dtype, setting)
            staging.rename(folder)
        files = sorted(file.name for file in folder.iterdir())
        assert out.name in files, f"{key} was exported as {files}, not as {out.name}"
        for name in files:
            shutil.copyfile(folder / name, out.parent / name)

    return export


@pytest.fixture
def cached_exports(bench_exports, monkeypatch):
    monkeypatch.setattr(bench_command, "export_for_onnxruntime", bench_exports)
    return bench_exports


@pytest.fixture(scope="module")
def half_plan(tiny_model_dirs, tmp_path_factory):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    profile = profile_model(ir, ProfileOptions(batch=1, seq_len=8, draws=1), show_progress=False)
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(dumps(make_plan(ir, profile, Budget(fraction=0.5), ActiveExperts())))
    return path


def _setting(ir, name: str, plan=None, quantize: str | None = None) -> TopKSetting:
    """The setting commands/bench makes for "base" or "plan", quantized at the default block size."""
    wanted = f"{name} {quantize}" if quantize else name
    settings = bench_command._settings(ir, str(plan) if plan else None, [quantize] if quantize else [], "fp32")
    return next(setting for setting in settings if setting.name == wanted)


def test_bench_reports_every_backend_and_setting(tiny_model_dirs, half_plan, cached_exports, tmp_path, capsys):
    model = str(tiny_model_dirs["qwen2_moe"])
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", model, "--plan", str(half_plan), "--batch", "1,2", "--prompt", "4", "--new-tokens", "2",
            "--repeats", "1", "--backends", "transformers,pytorch,onnxruntime-cpu", "--json",
            "--out", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report.pop("peak_memory")["peak_rss_bytes"] > 0  # what the command used, printed only
    assert json.loads(out.read_text()) == report
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [(r["backend"], r["setting"], r["batch"]) for r in report["rows"]]
    assert runs == [("transformers", "base", 1), ("transformers", "base", 2),
                    ("pytorch", "base", 1), ("pytorch", "base", 2), ("pytorch", "plan", 1), ("pytorch", "plan", 2),
                    ("onnxruntime-cpu", "base", 1), ("onnxruntime-cpu", "base", 2),
                    ("onnxruntime-cpu", "plan", 1), ("onnxruntime-cpu", "plan", 2)]
    plan_sum_k = sum(layer["top_k"] for layer in json.loads(half_plan.read_text())["layers"])
    assert report["settings"]["plan"]["sum_k"] == plan_sum_k < report["settings"]["base"]["sum_k"]
    for row in report["rows"]:
        assert row["prefill_tokens_per_s"]["median"] > 0 and row["decode_tokens_per_s"]["median"] > 0
        assert row["ttft_ms"]["runs"] == 1 and 0 < row["step_ms"]["p50"] <= row["step_ms"]["p99"]
        assert row["vs_transformers"] is not None
        assert (row["vs_base_top_k"] is None) == (row["setting"] == "base")
        assert (row["moe_share"] is None) == (row["backend"] == "onnxruntime-cpu")
    assert report["command"].startswith("moe-compile bench ")
    machine = report["machine"]  # which processor ran it: a shared VM's host changes between runs
    assert machine["cpu"] and machine["cores"] >= 1 and machine["threads"] >= 1, machine


def test_bench_rounds_time_every_backend_in_each_round_and_pool_the_paired_ratios(tiny_model_dirs, capsys):
    common = ["bench", str(tiny_model_dirs["qwen2_moe"]), "--backends", "transformers,pytorch", "--batch", "1",
              "--prompt", "3", "--new-tokens", "1", "--repeats", "1", "--rounds", "2"]
    assert main([*common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["workload"]["rounds"] == 2
    assert [(r["backend"], r["round"]) for r in report["round_rows"]] == [
        ("transformers", 0), ("pytorch", 0), ("pytorch", 1), ("transformers", 1)]
    pooled = {row["backend"]: row for row in report["rows"]}
    assert list(pooled) == ["transformers", "pytorch"] and all(row["rounds"] == 2 for row in pooled.values())
    each = [row["vs_transformers"]["decode"] for row in report["round_rows"] if row["backend"] == "pytorch"]
    assert pooled["pytorch"]["vs_transformers_range"]["decode"] == [min(each), max(each)]
    assert pooled["pytorch"]["decode_tokens_per_s"]["runs"] == 2
    assert main(common) == 0
    assert "medians of 2 rounds' own ratios" in capsys.readouterr().out


def test_bench_runs_a_given_onnx_file_for_its_setting(tiny_model_dirs, half_plan, cached_exports, tmp_path,
                                                      capsys, monkeypatch):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    plan = _setting(ir, "plan", half_plan)
    given = tmp_path / "given" / plan.onnx_file_name
    given.parent.mkdir()
    cached_exports(ir, given, "fp32", plan)
    exported = []
    monkeypatch.setattr(bench_command, "export_for_onnxruntime",
                        lambda ir, out, dtype, setting: exported.append(setting.name) or cached_exports(ir, out, dtype, setting))
    argv = ["bench", str(tiny_model_dirs["qwen2_moe"]), "--plan", str(half_plan), "--onnx", str(given),
            "--backends", "onnxruntime-cpu", "--batch", "1", "--prompt", "3", "--new-tokens", "1", "--repeats", "1",
            "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["backend"], r["setting"]) for r in report["rows"]] == [("onnxruntime-cpu", "base"),
                                                                      ("onnxruntime-cpu", "plan")]
    assert exported == ["base"]  # the plan ran from the given file


def test_bench_quantize_runs_quantized_files_beside_fp32(tiny_model_dirs, half_plan, cached_exports, tmp_path,
                                                         capsys):
    """--quantize int4: each top-k also as an int4 file, on ONNX Runtime's CPU provider only; a
    given quantized --onnx file takes its own setting's place."""
    model = str(tiny_model_dirs["qwen2_moe"])
    common = ["--batch", "1", "--prompt", "4", "--new-tokens", "2", "--repeats", "1", "--json"]
    argv = ["bench", model, "--plan", str(half_plan), "--quantize", "int4",
            "--backends", "transformers,onnxruntime-cpu", *common]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["backend"], r["setting"]) for r in report["rows"]] == [
        ("transformers", "base"), ("onnxruntime-cpu", "base"), ("onnxruntime-cpu", "plan"),
        ("onnxruntime-cpu", "base int4"), ("onnxruntime-cpu", "plan int4")]
    assert report["settings"]["plan int4"]["sum_k"] == report["settings"]["plan"]["sum_k"]
    assert all(r["decode_tokens_per_s"]["median"] > 0 for r in report["rows"])

    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    quantized = _setting(ir, "base", quantize="int4")
    given = tmp_path / "given" / quantized.onnx_file_name
    given.parent.mkdir()
    cached_exports(ir, given, "fp32", quantized)
    assert main(["bench", model, "--quantize", "int4", "--onnx", str(given), "--backends", "onnxruntime-cpu", *common]) == 0
    assert [r["setting"] for r in json.loads(capsys.readouterr().out)["rows"]] == ["base", "base int4"]


@pytest.mark.parametrize("case", ["unknown backend", "tensorrt without an engine", "engine without tensorrt",
                                  "batch zero", "batch not a number",
                                  "too long for the model", "bf16 on onnxruntime-cpu", "onnx of another model",
                                  "onnx at other top-k", "missing plan", "quantize int3", "quantize at fp16",
                                  "quantize without onnxruntime-cpu", "quantized onnx without --quantize"])
def test_bad_bench_input_is_one_line(case, tiny_model_dirs, half_plan, cached_exports, tmp_path, capsys):
    model = str(tiny_model_dirs["qwen2_moe"])
    base = ["bench", model, "--backends", "pytorch", "--prompt", "4", "--new-tokens", "2", "--out", str(tmp_path / "bench.json")]
    if case == "quantized onnx without --quantize":  # the default block size for this model: 16
        ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
        quantized = _setting(ir, "base", quantize="int4")
        cached_exports(ir, tmp_path / quantized.onnx_file_name, "fp32", quantized)
    if case in ("onnx of another model", "onnx at other top-k"):
        source = tiny_model_dirs["olmoe"] if case == "onnx of another model" else tiny_model_dirs["qwen2_moe"]
        ir = load_moe_model(source)
        export_onnx(ir, tmp_path / "m.onnx", target="onnxruntime", top_k={spec.index: 1 for spec in ir.layers})
    argv, message = {
        "unknown backend": (["--backends", "pytorch,tensorflow"], "unknown backend 'tensorflow'"),
        "tensorrt without an engine": (["--backends", "tensorrt"], "the tensorrt backend runs an engine: give --engine"),
        "engine without tensorrt": (["--engine", str(tmp_path / "e.plan")], "add tensorrt to --backends"),
        "batch zero": (["--batch", "1,0"], "--batch: 0 must be at least 1"),
        "batch not a number": (["--batch", "one"], "--batch: 'one' is not a whole number"),
        "too long for the model": (["--prompt", "1000", "--new-tokens", "100"], "more than the model's max_position"),
        "bf16 on onnxruntime-cpu": (["--precision", "bf16", "--backends", "onnxruntime-cpu"], "does not run bf16"),
        "onnx of another model": (["--onnx", str(tmp_path / "m.onnx")], "was exported from another model"),
        "onnx at other top-k": (["--onnx", str(tmp_path / "m.onnx")], "other per-layer top-k than the model's base"),
        "missing plan": (["--plan", str(tmp_path / "nope.json")], "does not exist"),
        "quantize int3": (["--quantize", "int3", "--backends", "onnxruntime-cpu"], "--quantize int3: not a supported target"),
        "quantize at fp16": (["--quantize", "int4", "--precision", "fp16"], "use --precision fp32 (not fp16)"),
        "quantize without onnxruntime-cpu": (["--quantize", "int4"], "add it to --backends"),
        "quantized onnx without --quantize": (["--onnx", str(tmp_path / "base-int4.onnx"), "--backends", "onnxruntime-cpu"],
                                              "is quantized (int4/16): run bench with --quantize int4"),
    }[case]
    capsys.readouterr()
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "bench.json").exists()


def test_a_run_that_would_not_fit_in_memory_is_skipped_and_said(tiny_model_dirs, cached_exports, tmp_path, capsys,
                                                                  monkeypatch):
    """Room for the PyTorch model, not for an ONNX Runtime session (its file x 1.2 + 1 GiB): the
    session is not built, the report and the table say why, the rest runs."""
    from moe_compile.validate import memory

    model = str(tiny_model_dirs["qwen2_moe"])
    ir = load_moe_model(model)
    room = sum(p.numel() * p.element_size() for p in compiled_model(ir)[0].parameters()) * 2
    monkeypatch.setattr(memory, "available_bytes", lambda: room)
    common = ["bench", model, "--backends", "pytorch,onnxruntime-cpu", "--batch", "1", "--prompt", "3",
              "--new-tokens", "1", "--repeats", "1"]
    assert main([*common, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [(r["backend"], r["setting"]) for r in report["rows"]] == [("pytorch", "base")]
    [skip] = report["skipped"]
    assert skip["backend"] == "onnxruntime-cpu" and skip["setting"] == "base"
    assert skip["reason"].startswith("needs about 1.0 GiB of memory, 0.0 GiB available"), skip
    assert "onnxruntime-cpu (base) not run: it needs about" in captured.err
    assert main(common) == 0
    assert "not run: onnxruntime-cpu (base), needs about" in capsys.readouterr().out


def test_nothing_that_fits_in_memory_is_one_line(tiny_model_dirs, cached_exports, tmp_path, capsys, monkeypatch):
    from moe_compile.validate import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1024)
    out = tmp_path / "bench.json"
    argv = ["bench", str(tiny_model_dirs["qwen2_moe"]), "--backends", "transformers,pytorch", "--prompt", "3",
            "--new-tokens", "1", "--repeats", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("moe-compile: error: nothing to bench in this machine's memory: transformers (base) "
                              "needs about"), err
    assert err[-1].endswith("and 1 more") and not out.exists()


def test_the_pytorch_estimate_covers_the_loaded_model(tiny_model_dirs):
    from moe_compile.validate.backends import BenchModel

    for model_type in ("qwen2_moe", "deepseek_v3"):
        ir = load_moe_model(tiny_model_dirs[model_type])
        loaded = sum(p.numel() * p.element_size() for p in compiled_model(ir, "fp16")[0].parameters())
        assert BenchModel(ir, "fp16").weight_bytes >= loaded > 0


def test_freed_heap_memory_goes_back_to_the_system():
    """The glibc behaviour bench works around: once a 16 MiB block is freed, 1 MiB blocks come from
    the heap; freed between small blocks still in use, they stay resident until return_freed_memory()."""
    import subprocess
    import sys

    script = (
        "from moe_compile.process_memory import status_bytes\n"
        "from moe_compile.validate.memory import return_freed_memory\n"
        "big = bytearray(b'x') * (16 << 20); del big\n"
        "chunks, kept = [], []\n"
        "for _ in range(256):\n"
        "    chunks.append(bytearray(b'x') * (1 << 20)); kept.append(bytearray(b'x') * 1024)\n"
        "before = status_bytes('RssAnon'); del chunks\n"
        "freed = status_bytes('RssAnon'); return_freed_memory()\n"
        "print(before >> 20, freed >> 20, status_bytes('RssAnon') >> 20)\n")
    before, freed, trimmed = map(int, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                     check=True).stdout.split())
    assert freed > before - 64, (before, freed, trimmed)  # freed, yet still resident
    assert trimmed < freed - 192, (before, freed, trimmed)


def test_the_layered_backend_runs_the_same_model_one_layer_at_a_time(tiny_model_dirs, half_plan, capsys,
                                                                     monkeypatch):
    """pytorch-layered (named only): the same logits as pytorch; its estimate is one unit's weights
    twice + 1 GiB, so it runs where pytorch, estimated at the whole model, is skipped with a hint."""
    import numpy as np

    from moe_compile.export.decoder import past_names
    from moe_compile.validate import backends as backends_module
    from moe_compile.validate.generation import decoder_feed

    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    model = backends_module.BenchModel(ir)
    setting = backends_module.TopKSetting("base", {spec.index: spec.base_top_k for spec in ir.layers})
    backends = backends_module.available_backends()
    assert "pytorch-layered" not in [b.name for b in backends_module.select_backends(None, None)]
    cache = model.empty_past(1)
    feed = decoder_feed(np.array([[3, 1, 4, 1, 5]], dtype=np.int64), dict(zip(past_names(len(cache) // 2), cache)), 0)
    whole = backends["pytorch"].build(model, setting).infer(feed)["logits"]
    layered = backends["pytorch-layered"].build(model, setting).infer(feed)["logits"]
    np.testing.assert_allclose(layered, whole, rtol=0, atol=1e-6)
    layer_bytes = sum(p.numel() * p.element_size() for p in compiled_model(ir)[0].model.layers[0].parameters())
    assert backends["pytorch-layered"].host_bytes(model, setting) >= 2 * layer_bytes + backends_module.LAYERED_EXTRA_BYTES

    monkeypatch.setattr(backends_module.BenchModel, "weight_bytes", property(lambda self: 1 << 50))  # a huge model
    argv = ["bench", str(tiny_model_dirs["qwen2_moe"]), "--backends", "pytorch,pytorch-layered", "--plan",
            str(half_plan), "--batch", "1", "--prompt", "3", "--new-tokens", "2", "--repeats", "1", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [(r["backend"], r["setting"]) for r in report["rows"]] == [("pytorch-layered", "base"),
                                                                      ("pytorch-layered", "plan")]
    assert all(r["decode_tokens_per_s"]["median"] > 0 and r["moe_share"] is not None for r in report["rows"])
    assert [s["backend"] for s in report["skipped"]] == ["pytorch", "pytorch"]
    assert report["skipped"][0]["reason"].endswith("(--backends pytorch-layered runs it one decoder layer at a time)")
