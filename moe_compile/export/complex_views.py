"""Shape ops on complex tensors, rewritten so that torch.onnx can translate them.

torch.onnx carries a complex tensor as a real one with a trailing axis of size 2 and translates
complex arithmetic, `view_as_real` and `view_as_complex`, but not every shape op on a complex
input. transformers' DeepSeek-V2 attention applies its rotary embedding in complex numbers and
unsqueezes the complex frequencies (`freqs_cis.unsqueeze(1)`), which stops the export.

`make_complex_views_exportable` rewrites each such node in the captured program into
`view_as_real -> the same op on the real view -> view_as_complex`. The values are unchanged;
only the graph's spelling differs, so no transformers class or function is touched.
"""

from __future__ import annotations

import torch
from torch._guards import detect_fake_mode

aten = torch.ops.aten

# op -> positions of its dim arguments: on the real view, a negative dim moves one to the left
# because of the trailing (real, imaginary) axis.
_DIM_ARGS = {
    aten.unsqueeze.default: (1,),
}


def _is_complex(node) -> bool:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(value, torch.Tensor) and value.is_complex()


def _real_dims(args: tuple, dim_positions: tuple[int, ...]) -> tuple:
    args = list(args)
    for position in dim_positions:
        if position < len(args) and args[position] < 0:
            args[position] -= 1
    return tuple(args)


def make_complex_views_exportable(program: torch.export.ExportedProgram) -> int:
    """Rewrite, in place, every op of `_DIM_ARGS` whose input is complex; returns how many."""
    graph = program.graph_module.graph
    fake_mode = detect_fake_mode([node.meta["val"] for node in graph.nodes if "val" in node.meta])
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _DIM_ARGS or not _is_complex(node.args[0]):
            continue
        source = node.args[0]
        with graph.inserting_before(node), fake_mode:
            real = graph.call_function(aten.view_as_real.default, (source,))
            real.meta["val"] = torch.view_as_real(source.meta["val"])
            args = _real_dims((real, *node.args[1:]), _DIM_ARGS[node.target])
            reshaped = graph.call_function(node.target, args, node.kwargs)
            reshaped.meta["val"] = node.target(real.meta["val"], *args[1:], **node.kwargs)
            back = graph.call_function(aten.view_as_complex.default, (reshaped,))
            back.meta["val"] = torch.view_as_complex(reshaped.meta["val"])
        for new in (real, reshaped, back):
            new.meta.setdefault("stack_trace", node.meta.get("stack_trace"))
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        node.replace_all_uses_with(back)
        graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph.lint()
        program.graph_module.recompile()
    return rewritten
