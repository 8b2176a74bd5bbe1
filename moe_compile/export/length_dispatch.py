"""A quantized graph split by input length: one body for decode steps, one for prompts.

ONNX Runtime's MatMulNBits computes either in fp32 (accuracy_level 0: each weight block
dequantized, then an fp32 product) or in int8 (accuracy_level 4: the activations quantized to int8
per block too). Which is faster depends on the rows, measured on this project's 2-core AVX2
machine with ONNX Runtime 1.32 (one node, 2 threads; docs/export.md):

    512 x 512 weights          1 row      512 rows
    fp32 MatMul                 69 us      3.0 ms
    4-bit, fp32 compute         92 us      3.2 ms
    4-bit, int8 compute         42 us      6.2 ms
    8-bit, fp32 compute        628 us      3.9 ms
    8-bit, int8 compute         45 us      8.9 ms

QMoE's 4-bit experts take the same attribute (its 8-bit experts always run on int8 activations).
A decode step (one new token per sequence) is fastest in int8, a prompt in fp32, and no single
attribute serves both. So the graph becomes `If(input length == 1)`: the decode branch holds the
graph with int8 compute (accuracy_level 4 on every MatMulNBits and QMoE), the prompt branch the
graph as exported (accuracy_level 0); both read the same quantized initializers of the outer
graph, so the file holds the weights once.

The decode branch's int8 activations are a rounding the dequantized reference does not make:
validate compares decode steps of such a file at `tolerances.INT8_ACTIVATIONS` (the metadata key
below says the file was built so). Prompts (and `eval --onnx`, which scores whole windows at once)
run the prompt branch; `eval --onnx --stepwise` scores the decode branch.
"""

from __future__ import annotations

import copy

from onnx import TensorProto, helper

from .subgraphs import renamed

METADATA_KEY = "moe_compile.decode_compute"  # "int8": the file is split and its decode branch computes in int8
DECODE_ACCURACY_LEVEL = 4  # int8 activations allowed
_INT8_CAPABLE = ("MatMulNBits", "QMoE")  # com.microsoft ops with accuracy_level (QMoE's: 4-bit experts; 8-bit ones always are)
_BRANCH_SUFFIX = ".branch"  # a branch's outputs, named apart from the If's own outputs
_DISPATCH = "dispatch"  # the If's name (prompt_graph finds it by it), the prefix of the nodes that feed it


def split_by_length(onnx_model) -> bool:
    """In place: the graph as `If(input_ids length == 1, decode body, prompt body)`, where the
    decode body's MatMulNBits and QMoE compute in int8. -> False (unchanged) if it has no MatMulNBits."""
    graph = onnx_model.graph
    if not any(node.op_type == "MatMulNBits" for node in graph.node):
        return False
    outputs = [output.name for output in graph.output]
    decode = _branch(graph, "decode", accuracy_level=DECODE_ACCURACY_LEVEL)
    prompt = _branch(graph, "prompt", accuracy_level=None)
    d = _DISPATCH
    one = helper.make_tensor(f"{d}.one", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Shape", ["input_ids"], [f"{d}.length"], name=f"{d}.length", start=1, end=2),
        helper.make_node("Constant", [], [f"{d}.one"], name=f"{d}.one", value=one),
        helper.make_node("Equal", [f"{d}.length", f"{d}.one"], [f"{d}.is_step"], name=f"{d}.equal"),
        helper.make_node("Squeeze", [f"{d}.is_step"], [f"{d}.is_decode"], name=f"{d}.squeeze"),
        helper.make_node("If", [f"{d}.is_decode"], outputs, name=d,
                         then_branch=decode, else_branch=prompt),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # moved into the branches, where those values now live
    return True


def prompt_graph(onnx_model) -> None:
    """In place: a split graph back as its prompt body alone (no If), so that its inner values
    (each layer's `moe_output.{layer}`) can be made graph outputs; unchanged if it is not split."""
    graph = onnx_model.graph
    dispatch = next((node for node in graph.node if node.op_type == "If" and node.name == _DISPATCH), None)
    if dispatch is None:
        return
    prompt = next(attr.g for attr in dispatch.attribute if attr.name == "else_branch")
    nodes = renamed(prompt.node, {f"{name}{_BRANCH_SUFFIX}": name for name in dispatch.output})
    del graph.node[:]
    graph.node.extend(nodes)
    graph.value_info.extend(prompt.value_info)


def _branch(graph, name: str, accuracy_level: int | None):
    """A copy of `graph`'s nodes as an If branch (no inputs; it reads the outer graph's inputs and
    initializers), its outputs suffixed, MatMulNBits and QMoE set to `accuracy_level` where given."""
    suffixed = {output.name: f"{output.name}{_BRANCH_SUFFIX}" for output in graph.output}
    nodes = renamed(graph.node, suffixed)
    for node in nodes:
        if accuracy_level is not None and node.op_type in _INT8_CAPABLE:
            kept = [attr for attr in node.attribute if attr.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", accuracy_level)])
    outputs = []
    for output in graph.output:
        info = copy.deepcopy(output)
        info.name = suffixed[output.name]
        outputs.append(info)
    return helper.make_graph(nodes, name, [], outputs, value_info=copy.deepcopy(list(graph.value_info)))
