"""An ONNX Runtime graph split by input size: one body for decode steps, one for prompts.

Two things make one graph a poor fit for both.

Switches. An fp32 export switches each MoE layer on its token count (sorted experts from
MIN_SORTED_TOKENS tokens on, the node below: lowering/sorted_experts.py) and each attention on
whether the input is a long whole causal prompt (GroupQueryAttention, export/grouped_attention.py).
Each switch is an If, and ONNX Runtime 1.32 charges for an If at every run: on onnx_speed.py's model
(six layers, twelve switches) a decode step took 5.06 ms with them, 4.52 ms with each replaced by
the branch a step takes, and 4.74 ms with the whole graph inside one If that resolves them (fresh
sessions, 2 threads, one token fed at every step, by hand; docs/export.md): the bodies inside it
run as fast as the main graph.

int8 compute. MatMulNBits computes either in fp32 (accuracy_level 0: each weight block
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

So the graph becomes `If(short input, short body, long body)`. The short body takes, at every
switch, the branch a short input takes (the node, the grouped attention) and, in a quantized
graph, computes in int8 (accuracy_level 4 on every MatMulNBits and QMoE); the long body takes the
sorted experts and keeps the attention switches (the exporter then hoists their grouped form,
export/hoisted_attention.py). Short is fewer than MIN_SORTED_TOKENS tokens (batch x length) where
the graph has expert switches (below that they take the node), else one token per sequence (a
decode step). Both bodies read the outer graph's inputs and initializers: the file holds the
weights once.

A quantized graph's int8 decode steps are a rounding the dequantized reference does not make:
validate compares them at `tolerances.INT8_ACTIVATIONS` (DECODE_COMPUTE_KEY says the file was
built so). Prompts (and `eval --onnx`, which scores whole windows at once) run the long body;
`eval --onnx --stepwise` scores the short one.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from onnx import TensorProto, helper

from .lowering.ort_support import MIN_SORTED_TOKENS
from .lowering.prompt_attention import is_attention_switch
from .lowering.sorted_experts import is_expert_switch
from .subgraphs import ELSE, THEN, branch, inlined, live, renamed

METADATA_KEY = "moe_compile.split_by_length"  # the short body's condition: FEW_TOKENS or ONE_TOKEN
DECODE_COMPUTE_KEY = "moe_compile.decode_compute"  # "int8": the short body computes in int8
FEW_TOKENS = f"batch x length < {MIN_SORTED_TOKENS}"
ONE_TOKEN = "length == 1"
DECODE_ACCURACY_LEVEL = 4  # int8 activations allowed
_INT8_CAPABLE = ("MatMulNBits", "QMoE")  # com.microsoft ops with accuracy_level (QMoE's: 4-bit experts; 8-bit ones always are)
_BRANCH_SUFFIX = ".branch"  # a branch's outputs, named apart from the If's own outputs
_DISPATCH = "dispatch"  # the If's name (long_body finds it by it), the prefix of the nodes that feed it


class Split(NamedTuple):
    condition: str  # what makes an input short: FEW_TOKENS or ONE_TOKEN
    int8: bool  # the short body computes in int8 (DECODE_COMPUTE_KEY)


def split_by_length(onnx_model, int8_steps: bool = False) -> Split | None:
    """In place: the graph as `If(short input, short body, long body)` -> how it was split; None,
    the graph unchanged, when it has no switch and nothing to compute in int8. `int8_steps`: the
    short body computes in int8 where the graph has MatMulNBits (a quantized graph)."""
    graph = onnx_model.graph
    experts = any(is_expert_switch(node) for node in graph.node)
    attention = any(is_attention_switch(node) for node in graph.node)
    int8 = int8_steps and any(node.op_type == "MatMulNBits" for node in graph.node)
    if not (experts or attention or int8):
        return None
    if experts and int8:
        raise RuntimeError("a graph with fp32 expert switches has no int8 decode steps to split for")
    outputs = [output.name for output in graph.output]
    short = _body(graph, "short", long=False, accuracy_level=DECODE_ACCURACY_LEVEL if int8 else None)
    long = _body(graph, "long", long=True, accuracy_level=None)
    d = _DISPATCH
    if experts:
        condition = FEW_TOKENS
        nodes = [helper.make_node("Size", ["input_ids"], [f"{d}.tokens"], name=f"{d}.tokens"),
                 helper.make_node("Constant", [], [f"{d}.few"], name=f"{d}.few",
                                  value=helper.make_tensor(f"{d}.few", TensorProto.INT64, [], [MIN_SORTED_TOKENS])),
                 helper.make_node("Less", [f"{d}.tokens", f"{d}.few"], [f"{d}.is_short"], name=f"{d}.less")]
    else:
        condition = ONE_TOKEN
        nodes = [helper.make_node("Shape", ["input_ids"], [f"{d}.length"], name=f"{d}.length", start=1, end=2),
                 helper.make_node("Constant", [], [f"{d}.one"], name=f"{d}.one",
                                  value=helper.make_tensor(f"{d}.one", TensorProto.INT64, [1], [1])),
                 helper.make_node("Equal", [f"{d}.length", f"{d}.one"], [f"{d}.is_step"], name=f"{d}.equal"),
                 helper.make_node("Squeeze", [f"{d}.is_step"], [f"{d}.is_short"], name=f"{d}.squeeze")]
    nodes.append(helper.make_node("If", [f"{d}.is_short"], outputs, name=d, then_branch=short, else_branch=long))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # moved into the bodies, where those values now live
    return Split(condition, int8)


def long_body(onnx_model):
    """The long body of a split graph (a GraphProto, edited in place by the caller), or None."""
    dispatch = next((node for node in onnx_model.graph.node if node.op_type == "If" and node.name == _DISPATCH), None)
    return None if dispatch is None else branch(dispatch, ELSE)


def prompt_graph(onnx_model) -> None:
    """In place: a split graph back as its long body alone (no If), so that its inner values
    (each layer's `moe_output.{layer}`) can be made graph outputs; unchanged if it is not split."""
    graph = onnx_model.graph
    prompt = long_body(onnx_model)
    if prompt is None:
        return
    nodes = renamed(prompt.node, {output.name: output.name.removesuffix(_BRANCH_SUFFIX) for output in prompt.output})
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(prompt.initializer)
    graph.value_info.extend(prompt.value_info)


def _body(graph, name: str, long: bool, accuracy_level: int | None):
    """`graph`'s nodes as an If branch (no inputs; it reads the outer graph's inputs and
    initializers), its outputs suffixed: each expert switch inlined (sorted experts for a `long`
    body, the node otherwise), each attention switch kept in a long body and inlined (the grouped
    form) in a short one; MatMulNBits and QMoE set to `accuracy_level` where given."""
    nodes, initializers = [], []
    for node in graph.node:
        if is_expert_switch(node) or (not long and is_attention_switch(node)):
            taken, held = inlined(node, THEN if long and is_expert_switch(node) else ELSE)
            nodes += taken
            initializers += held
        else:
            nodes.append(node)
    suffixed = {output.name: f"{output.name}{_BRANCH_SUFFIX}" for output in graph.output}
    nodes = renamed(live(nodes, suffixed), suffixed)
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
    computed = {value for node in nodes for value in node.output}
    return helper.make_graph(nodes, name, [], outputs, initializer=initializers,
                             value_info=[copy.deepcopy(info) for info in graph.value_info if info.name in computed])
