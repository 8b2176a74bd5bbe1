"""`moe-compile bench`: the same workload through every backend here, base top-k and plan side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from moe_compile.atomic import all_or_none, check_writable
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import BackendUnavailable, InvalidInput
from moe_compile.jsonio import print_report


def _settings(ir, plan: str | None, quantize: list[str], precision: str) -> list:
    """base (and plan) top-k, each also as a file quantized to every `--quantize` scheme
    ("base int4"): the scheme's default block size for this model."""
    from moe_compile.compiler.lexi.plan import load_plan
    from moe_compile.quantization.scheme import quant_scheme
    from moe_compile.validate.backends import TopKSetting

    settings = [TopKSetting("base", {spec.index: spec.base_top_k for spec in ir.layers})]
    if plan:
        settings.append(TopKSetting("plan", load_plan(plan, ir)))
    if quantize and precision != "fp32":
        raise InvalidInput(f"--quantize: quantized files run fp32 activations; use --precision fp32 (not {precision})")
    schemes = [quant_scheme(name, None, int(ir.config.hidden_size), [spec.intermediate for spec in ir.layers])
               for name in dict.fromkeys(quantize)]
    return settings + [TopKSetting(f"{setting.name} {scheme.name}", setting.top_k, scheme)
                       for setting in settings for scheme in schemes]


def _given_onnx(ir, path: str, settings: list, precision: str) -> dict:
    """--onnx: the setting it was exported at (checked against the model and the plan)."""
    from moe_compile.validate.parity import onnx_metadata

    metadata = onnx_metadata(Path(path))
    if metadata["moe_compile.target"] == "tensorrt":
        raise InvalidInput(f"{path} is a tensorrt-target export (plugin nodes): ONNX Runtime cannot run it")
    return _setting_of(metadata, ir, Path(path), settings, precision)


def _given_engine(ir, path: str, settings: list, precision: str) -> dict:
    """--engine: the setting it was built at, from the metadata the build put in the engine."""
    from pathlib import Path

    from moe_compile.validate.parity import engine_metadata
    from moe_compile.validate.runners import load_engine

    return _setting_of(engine_metadata(load_engine(path), Path(path)), ir, Path(path), settings, precision)


def _setting_of(metadata: dict, ir, path, settings: list, precision: str) -> dict:
    """{setting name: path} for the setting whose top-k (and quantization) the file was made at."""
    from moe_compile.quantization.scheme import METADATA_KEY as QUANTIZE_KEY
    from moe_compile.validate.parity import check_metadata_matches

    top_k = check_metadata_matches(metadata, ir, None, path)
    if metadata["moe_compile.dtype"] != precision:
        raise InvalidInput(f"{path} is {metadata['moe_compile.dtype']}; run bench with "
                           f"--precision {metadata['moe_compile.dtype']}")
    scheme = metadata.get(QUANTIZE_KEY)
    if scheme and not any(s.quantize and s.quantize.metadata() == scheme for s in settings):
        raise InvalidInput(f"{path} is quantized ({scheme}): run bench with --quantize {scheme.split('/')[0]} "
                           "(at that block size, the default)")
    matching = [setting.name for setting in settings if setting.top_k == top_k
                and (setting.quantize.metadata() if setting.quantize else None) == scheme]
    if not matching:
        raise InvalidInput(f"{path} was made with other per-layer top-k than the model's base top-k"
                           + (" and the plan" if len(settings) > 1 else ""))
    return {matching[0]: path}


def _fitting(runs: list, model, skipped: list, console: Console) -> list:
    """The runs this machine's memory holds; the others are added to `skipped`, each with why."""
    from moe_compile.validate.backends import memory_shortfall

    fitting = []
    for backend, setting in runs:
        shortfall = memory_shortfall(backend, model, setting)
        if shortfall:
            skipped.append({"backend": backend.name, "setting": setting.name, "reason": shortfall})
            console.print(f"bench: {backend.name} ({setting.name}) not run: it {shortfall}", highlight=False)
        else:
            fitting.append((backend, setting))
    return fitting


def export_for_onnxruntime(ir, out: Path, dtype: str, setting) -> None:
    """How bench makes the ONNX a setting needs when --onnx did not give it."""
    from moe_compile.export.exporter import export_onnx

    export_onnx(ir, out, target="onnxruntime", dtype=dtype, top_k=setting.top_k, quantize=setting.quantize)


def _check_workload(ir, args: argparse.Namespace, backends: list) -> None:
    longest = max(args.prompt) + args.new_tokens
    limit = getattr(ir.config, "max_position_embeddings", None)
    if limit and longest > limit:
        raise InvalidInput(f"--prompt {max(args.prompt)} + --new-tokens {args.new_tokens} = {longest} positions, "
                           f"more than the model's max_position_embeddings ({limit})")
    if args.precision == "bf16" and any(b.name == "onnxruntime-cpu" for b in backends):
        raise InvalidInput("ONNX Runtime's CPU provider does not run bf16: use --precision fp32|fp16, "
                           "or leave onnxruntime-cpu out of --backends")


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from moe_compile.validate.backends import BenchModel, select_backends
    from moe_compile.validate.bench import (
        Workload,
        add_speedups,
        in_rounds,
        machine_description,
        measure,
        pooled_rounds,
    )

    for output in (args.out, args.plot):
        if output:
            check_writable(output)  # before minutes of measuring, not after
    backends = select_backends(args.backends, args.engine)
    ir = load_moe_model(args.model)
    _check_workload(ir, args, backends)
    settings = _settings(ir, args.plan, args.quantize, args.precision)
    if args.quantize and not any(backend.runs_onnx and backend.device == "cpu" for backend in backends):
        raise InvalidInput("--quantize: quantized files run on onnxruntime-cpu; add it to --backends")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model = BenchModel(ir, args.precision, threads,
                       _given_onnx(ir, args.onnx, settings, args.precision) if args.onnx else {},
                       _given_engine(ir, args.engine, settings, args.precision) if args.engine else {},
                       export=export_for_onnxruntime)
    workloads = [Workload(b, p, args.new_tokens) for b in sorted(args.batch) for p in sorted(args.prompt)]
    runs = [(backend, setting) for backend in backends for setting in settings if backend.runs(setting, model)]
    rows, skipped = [], []
    console = Console(stderr=True)
    try:
        runs = _fitting(runs, model, skipped, console)
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("bench", total=len(runs) * len(workloads) * args.rounds)
            for number, (backend, setting) in in_rounds(runs, args.rounds):
                progress.update(task, description=f"bench: {backend.name} ({setting.name})"
                                + (f", round {number + 1} of {args.rounds}" if args.rounds > 1 else ""))
                rows += measure(backend, setting, model, workloads, args.repeats,
                                progress=lambda: progress.advance(task), round_number=number)
    finally:
        model.close()
    if not rows:
        first = skipped[0]
        raise BackendUnavailable(f"nothing to bench in this machine's memory: {first['backend']} ({first['setting']}) "
                                 f"{first['reason']}" + (f", and {len(skipped) - 1} more" if len(skipped) > 1 else ""))
    add_speedups(rows)
    report = {
        "model": {"name": str(args.model), "model_type": ir.model_type, "sha256": ir.fingerprint["sha256"]},
        "machine": machine_description(threads),
        "precision": args.precision,
        "settings": {s.name: {"sum_k": s.sum_k, "top_k": {str(k): v for k, v in s.top_k.items()}} for s in settings},
        "workload": {"batch": sorted(args.batch), "prompt": sorted(args.prompt), "new_tokens": args.new_tokens,
                     "repeats": args.repeats, "rounds": args.rounds, "warmup_runs": 1},
        "rows": pooled_rounds(rows),
        **({"round_rows": rows} if args.rounds > 1 else {}),
        "skipped": skipped,  # runs that would not fit in memory: backend, setting, why
        "command": args.command_line,
    }
    _write_outputs(report, args)
    return 0


def _write_outputs(report: dict, args: argparse.Namespace) -> None:
    from moe_compile.validate.bench_plot import plot_bench

    text = json.dumps(report, indent=2) + "\n"
    outputs = [path for path in (args.out, args.plot) if path]
    if outputs:
        with all_or_none(*outputs) as staging:
            if args.out:
                staging.path(args.out).write_text(text)
            if args.plot:
                plot_bench(report, staging.path(args.plot))
            staging.commit()
    if args.json:
        print_report(report)
    else:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: no wrapping at 80 columns
            console = Console(width=200)
        console.print(bench_table(report))


def bench_table(report: dict) -> Table:
    """Medians with the run-to-run range in %, one row per backend x top-k x workload."""
    machine = report["machine"]
    table = Table(title=f"{report['model']['name']} ({report['precision']}), {machine['cpu']}, "
                        f"{machine['threads']} threads" + (f", {machine['gpu']}" if "gpu" in machine else ""),
                  caption="± : half the min-max range over the runs; speed-ups are prefill / decode"
                          + (f", medians of {report['workload']['rounds']} rounds' own ratios (their range)"
                             if report["workload"].get("rounds", 1) > 1 else "") + "".join(
                      f"\nnot run: {skip['backend']} ({skip['setting']}), {skip['reason']}"
                      for skip in report.get("skipped", [])))
    for column in ("backend", "top-k", "batch x prompt", "prefill tok/s", "TTFT ms", "decode tok/s",
                   "step ms p50/p99", "peak MB", "MoE share", "x transformers", "x base top-k"):
        table.add_column(column, justify="left" if column in ("backend", "top-k") else "right")
    for row in report["rows"]:
        share = row["moe_share"]
        peak = row["peak_device_mb"] if row["peak_device_mb"] is not None else row["peak_host_mb"]
        table.add_row(
            row["backend"], f"{row['setting']} Σk={row['sum_k']}", f"{row['batch']} x {row['prompt']}",
            _spread(row["prefill_tokens_per_s"], 0), _spread(row["ttft_ms"], 2), _spread(row["decode_tokens_per_s"], 1),
            f"{row['step_ms']['p50']:.2f} / {row['step_ms']['p99']:.2f}", "-" if peak is None else f"{peak:.0f}",
            f"{share['prefill']:.0%} / {share['decode']:.0%}" if share else "-",
            _ratios(row["vs_transformers"], row.get("vs_transformers_range")),
            _ratios(row["vs_base_top_k"], row.get("vs_base_top_k_range")))
    return table


def _spread(spread: dict, digits: int) -> str:
    half_range = (spread["max"] - spread["min"]) / 2 / spread["median"] if spread["median"] else 0.0
    return f"{spread['median']:.{digits}f} ±{half_range:.0%}"


def _ratios(ratios: dict | None, ranges: dict | None = None) -> str:
    """prefill / decode speed-ups; with rounds, each round's range after it."""
    if not ratios:
        return "-"

    def one(phase: str) -> str:
        low, high = ranges[phase] if ranges else (None, None)
        return f"{ratios[phase]:.2f}" + (f" ({low:.2f}-{high:.2f})" if low is not None and low != high else "")

    return f"{one('prefill')} / {one('decode')}"
