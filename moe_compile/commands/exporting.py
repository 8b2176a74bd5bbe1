"""Export with a sign of life: `export` and both pipelines run torch.onnx for seconds to
minutes, so a spinner with the elapsed time stays on stderr while it works (only on a
terminal, like the profile's progress bar; stdout may carry --json)."""

from __future__ import annotations

from pathlib import Path

from moe_compile.compiler.ir import MoEModel


def export_with_progress(moe_model: MoEModel, out: Path, *, target: str, plan, dtype: str, show: bool = True,
                         quantize=None, moe_prompts: str = "sorted", ort_fusions: bool = False):
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from moe_compile.export.exporter import export_onnx

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not (show and console.is_terminal)) as progress:
        progress.add_task(f"exporting {moe_model.model_type} ({len(moe_model.layers)} MoE layers) to ONNX, "
                          f"target {target}, {dtype}" + (f", {quantize.metadata()}" if quantize else ""), total=None)
        return export_onnx(moe_model, out, target=target, plan=plan, dtype=dtype, quantize=quantize,
                           moe_prompts=moe_prompts, ort_fusions=ort_fusions)
