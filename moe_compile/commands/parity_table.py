"""How validate and both pipelines print a parity report: a table, or JSON, and the mismatch line."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from moe_compile.jsonio import print_report


_RUNTIMES = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}


def print_parity(report, as_json: bool) -> None:
    if as_json:
        print_report(report.to_json())
    else:
        table = Table(title=f"parity: PyTorch vs {_RUNTIMES[report.runtime]}, {report.file} ({report.target}, "
                            f"{report.dtype}, rtol {report.tolerance['rtol']:g}, atol {report.tolerance['atol']:g}"
                            + (f"; decode on int8 activations: rtol {report.decode_tolerance['rtol']:g}, "
                               f"atol {report.decode_tolerance['atol']:g}" if report.decode_tolerance else "") + ")")
        for column in ("step", "output", "max |diff|", "max rel", "ok"):
            table.add_column(column)
        for step, diffs in (("prefill", report.prefill), ("decode", report.decode), ("layer", report.layer_diffs)):
            for name, group in _grouped(diffs):
                worst = max(group, key=lambda diff: diff.max_abs)
                table.add_row(step, name, f"{worst.max_abs:.3g}", f"{max(d.max_rel for d in group):.3g}",
                              "yes" if all(d.passed for d in group) else "NO")
        Console().print(table)
        print(f"greedy generation of {report.generated_tokens} tokens: "
              + ("identical" if report.generation_identical else
                 f"differs from token {report.first_generation_difference}"))
    if not report.passed:
        where = ""
        if report.first_diverging_layer is not None:
            where = f"; first diverging MoE layer: {report.first_diverging_layer}"
        elif report.largest_moe_difference_layer is not None:
            where = (f"; every MoE layer is within tolerance (the largest difference at MoE layer "
                     f"{report.largest_moe_difference_layer}): the difference comes from outside the MoE layers "
                     "or builds up across them")
        print(f"moe-compile: validate: {report.file} does not match the PyTorch reference{where}", file=sys.stderr)


def _grouped(diffs: list) -> list[tuple[str, list]]:
    """The KV-cache outputs as one row (`present.* (16)`), unless one of them fails."""
    present = [d for d in diffs if d.name.startswith("present.")]
    rest = [(d.name, [d]) for d in diffs if not d.name.startswith("present.")]
    if not present:
        return rest
    if all(d.passed for d in present):
        return rest + [(f"present.* ({len(present)})", present)]
    return rest + [(d.name, [d]) for d in present]
