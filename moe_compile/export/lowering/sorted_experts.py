"""com.microsoft.MoE for a few tokens, its experts sorted into plain Gemms for more.

ONNX Runtime 1.32's CPU MoE kernel is the fastest way to run one token's experts and slower than
standard ops for many. Measured (benchmarks/moe_prefill_lowering.py, docs/export.md) against the
same layer in standard ops ordered by expert: the T·k (token, expert) pairs sorted by expert,
each expert's contiguous rows multiplied by its own constant weights (Gemm, which ONNX Runtime
prepacks), the results put back by the inverse permutation and summed with the routing weights.
The sorted form costs ~15 nodes per expert, run even for experts no token chose: at 1 and 2
tokens the node wins, from 4 on (a batch's decode step, any prompt) the sorted form does in the
whole model (one layer alone at two threads on an AVX-512 host favoured the node up to 128). So each
fp32 com.microsoft.MoE becomes `If(tokens >= MIN_SORTED_TOKENS, sorted experts, the node)`.

The sorted branch needs each expert's weights as a tensor of its own: in a file with external
data they are views of the node's stacked tensors (offsets into the same .data file, nothing
written twice); inline, copies. Its cost is memory: ONNX Runtime prepacks the per-expert Gemm
weights into buffers of its own, so a session holds the experts twice (the node reads its
tensors mapped from the file, the Gemms their packed copies). `export --moe-prompts node` keeps
the node for every token count.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..subgraphs import drop_unread_initializers
from .ort_support import EXPERT_SLICES, MIN_SORTED_TOKENS, MS_DOMAIN, SMALLEST_WEIGHT, expert_slices

METADATA_KEY = "moe_compile.moe_prompts"  # SORTED: the file holds the If above
SORTED, NODE = "sorted", "node"  # `export --moe-prompts`
MOE_PROMPTS = (SORTED, NODE)
_FC1, _FC1_BIAS, _FC2, _FC2_BIAS = 2, 3, 4, 5
_SWITCH = ".by_tokens"  # the end of each switch's name
_HALVES_SOURCE = ".as_slices"  # the end of each view the few-token node's halves are gathered from


def sort_multi_token_experts(onnx_model, min_tokens: int = MIN_SORTED_TOKENS) -> int:
    """In place: every fp32 com.microsoft.MoE as If(tokens >= min_tokens, sorted experts, the node).
    -> how many nodes were switched."""
    graph = onnx_model.graph
    initializers = {init.name: init for init in graph.initializer}
    switched, nodes = 0, []
    for node in graph.node:
        if node.domain == MS_DOMAIN and node.op_type == "MoE" and initializers[node.input[_FC1]].data_type == TensorProto.FLOAT:
            nodes.extend(_switch(node, initializers, graph.initializer, min_tokens))
            switched += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unread_initializers(graph)  # the stacked tensors a halved node no longer reads (its bytes are the views')
    return switched


def gathered_halves_bytes(onnx_model) -> int:
    """What ONNX Runtime gathers into the few-token nodes' halves when a session starts (`_HalvedNode`:
    a copy in anonymous memory beside the mapped file), from the graph alone: the bytes of the views
    they are gathered from."""
    return sum(int(np.prod(init.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
               for init in onnx_model.graph.initializer if init.name.endswith(_HALVES_SOURCE))


def is_expert_switch(node) -> bool:
    """Whether `node` is one of the Ifs above: the then-branch the sorted experts, the else-branch the node."""
    return node.op_type == "If" and node.name.endswith(_SWITCH)


def _switch(node, initializers: dict, new_initializers, min_tokens: int) -> list:
    """The nodes that replace `node`: its token count, the condition, the If."""
    out = node.output[0]
    prefix = f"{out}.sorted"
    stacked = {position: initializers[node.input[position]]
               for position in (_FC1, _FC1_BIAS, _FC2, _FC2_BIAS) if position < len(node.input) and node.input[position]}
    experts = {position: _per_expert(tensor, new_initializers) for position, tensor in stacked.items()}
    sorted_branch = _SortedExperts(prefix, node, experts, list(stacked[_FC2].dims)).graph()
    if expert_slices(True, stacked[_FC2].dims[-1]) > 1:
        fused_branch = _HalvedNode(f"{out}.halves", node, stacked, new_initializers).graph()
    else:
        fused = helper.make_node(node.op_type, node.input, [f"{out}.fused"], name=f"{node.name}.fused", domain=MS_DOMAIN)
        fused.attribute.extend(node.attribute)
        fused_branch = helper.make_graph([fused], f"{prefix}.fused_branch", [],
                                         [helper.make_tensor_value_info(f"{out}.fused", TensorProto.FLOAT, None)])
    return [
        helper.make_node("Shape", [node.input[0]], [f"{prefix}.tokens"], name=f"{prefix}.tokens", start=0, end=1),
        helper.make_node("Constant", [], [f"{prefix}.min_tokens"], name=f"{prefix}.min_tokens",
                         value=helper.make_tensor(f"{prefix}.min_tokens", TensorProto.INT64, [1], [min_tokens])),
        helper.make_node("GreaterOrEqual", [f"{prefix}.tokens", f"{prefix}.min_tokens"], [f"{prefix}.many"], name=f"{prefix}.many"),
        helper.make_node("Squeeze", [f"{prefix}.many"], [f"{prefix}.cond"], name=f"{prefix}.squeeze"),
        helper.make_node("If", [f"{prefix}.cond"], [out], name=f"{node.name}{_SWITCH}",
                         then_branch=sorted_branch, else_branch=fused_branch),
    ]


def _per_expert(stacked, new_initializers) -> list[str]:
    """Initializers for each expert of `stacked` [E, ...]: views of its external bytes where it
    has them (same file, offset + e·size), else copies. -> their names, by expert."""
    names = [f"{stacked.name}.expert{e}" for e in range(stacked.dims[0])]
    if stacked.data_location == TensorProto.EXTERNAL:
        size = _external_length(stacked) // stacked.dims[0]
        for e, name in enumerate(names):
            new_initializers.append(_view(stacked, name, stacked.dims[1:], e * size, size))
    else:
        array = numpy_helper.to_array(stacked)
        new_initializers.extend(numpy_helper.from_array(np.ascontiguousarray(array[e]), name) for e, name in enumerate(names))
    return names


def _external_length(tensor) -> int:
    return int(next(entry.value for entry in tensor.external_data if entry.key == "length"))


def _view(stacked, name: str, dims, start: int, length: int):
    """An initializer `name` of shape `dims` reading `length` bytes of `stacked`'s external data
    from `start` on (relative to its own offset)."""
    info = {entry.key: entry.value for entry in stacked.external_data}
    view = TensorProto(name=name, data_type=stacked.data_type, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", info["location"]), ("offset", str(int(info.get("offset", 0)) + start)),
                       ("length", str(length))):
        view.external_data.add(key=key, value=value)
    return view


class _Branch:
    """One branch of a switch, built from its MoE node: nodes and constants of its own, and the
    node's routing in standard ops."""

    def __init__(self, prefix: str, node, output: str, count: int):
        self.attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        self.prefix, self.nodes, self.constants = prefix, [], []
        self.hidden, self.logits = node.input[0], node.input[1]
        self.k = self.attrs["k"]
        self.normalize = bool(self.attrs.get("normalize_routing_weights", 0))
        self.count = count  # the node's experts
        self.output = output

    def add(self, op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> str | list[str]:
        index = len(self.nodes)
        names = outputs if isinstance(outputs, list) else [f"{self.prefix}.{op.lower()}{index}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{self.prefix}.{op.lower()}{index}", **attrs))
        return names[0] if len(names) == 1 else names

    def const(self, value, dtype=np.int64) -> str:
        name = f"{self.prefix}.c{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def graph(self):
        return helper.make_graph(self.nodes, self.prefix, [], [helper.make_tensor_value_info(self.output, TensorProto.FLOAT, None)],
                                 initializer=self.constants)

    def route(self) -> tuple[str, str]:
        """The node's routing: softmax, top-k, optional renormalisation. Its kernel breaks ties
        towards the higher expert index, ONNX's TopK towards the lower: rank the experts in
        reverse and map the indices back. -> (weights [T, k], experts [T, k] in the node's order)."""
        last = self.count - 1
        reversed_logits = self.add("Gather", [self.logits, self.const(np.arange(last, -1, -1))], axis=1)
        weights, ranked = self.add("TopK", [self.add("Softmax", [reversed_logits], axis=-1), self.const([self.k])], 2,
                                   axis=-1, largest=1, sorted=1)
        if self.normalize:
            weights = self.add("Div", [weights, self.add("ReduceSum", [weights, self.const([-1])], keepdims=1)])
        return weights, self.add("Sub", [self.const(last), ranked])


class _SortedExperts(_Branch):
    """The sorted branch of one MoE node: the node's routing and experts, in standard ops."""

    def __init__(self, prefix: str, node, experts: dict[int, list[str]], fc2_dims: list[int]):
        super().__init__(prefix, node, f"{node.output[0]}.sorted", len(experts[_FC1]))
        self.experts = experts
        self.alpha, self.beta = self.attrs.get("activation_alpha", 1.0), self.attrs.get("activation_beta", 0.0)
        self.limit = self.attrs.get("swiglu_limit")
        self.intermediate = fc2_dims[-1]  # fc2 [E, H, I]

    def graph(self):
        weights, experts = self.route()
        pairs = self.add("Reshape", [experts, self.const([-1])])  # [T·k]; pair p is token p // k
        count = self.add("Shape", [pairs])
        _, order = self.add("TopK", [self.add("Neg", [pairs]), count], 2, axis=0, largest=1, sorted=1)  # by expert
        tokens = self.add("Div", [order, self.const(self.k)])  # the token of each pair, in that order
        scales = self.add("Gather", [self.add("Reshape", [weights, self.const([-1, 1])]), order], axis=0)  # [T·k, 1]
        per_expert = self.add("ReduceSum", [self.add("Cast", [self.add("Equal", [
            self.add("Unsqueeze", [pairs, self.const([-1])]), self.const(np.arange(self.count))])], to=TensorProto.INT64),
            self.const([0])], keepdims=0)  # [E]
        # Each expert's tokens and routing weights: no copy of the hidden rows before its own Gather.
        token_lists = self.add("Split", [tokens, per_expert], self.count, axis=0)
        scale_lists = self.add("Split", [scales, per_expert], self.count, axis=0)
        outputs = [self.expert(e, self.add("Gather", [self.hidden, token_lists[e]], axis=0), scale_lists[e])
                   for e in range(self.count)]
        by_expert = self.add("Concat", outputs, axis=0)  # [T·k, H], pairs in `order`, weighted
        inverse = self.add("ScatterElements", [
            self.add("ConstantOfShape", [count], value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
            order, self.add("Range", [self.const(0), self.add("Squeeze", [count]), self.const(1)])], axis=0)
        per_slot = self.add("Reshape", [self.add("Gather", [by_expert, inverse], axis=0),
                                        self.add("Concat", [self.const([-1, self.k]), self.add("Shape", [self.hidden], start=1)], axis=0)])
        self.add("ReduceSum", [per_slot, self.const([1])], [self.output], keepdims=0)
        return super().graph()

    def expert(self, e: int, rows: str, scale: str) -> str:
        """Expert e on its rows [n, H], each weighted by its routing weight `scale` [n, 1]: fc1 (gate/up
        interleaved), the node's SwiGLU (G = min(g, limit), L = clip(l, ±limit), G·sigmoid(alpha·G)·(L + beta)),
        fc2. The weight multiplies fc2's input, which is narrower than its output, unless fc2 has a bias."""
        gate_up = self.add("Gemm", [rows, self.experts[_FC1][e], *self.bias(_FC1_BIAS, e)], transB=1)  # [n, 2I]: g0 u0 g1 u1 ...
        # De-interleaved by one Transpose ([n, I, 2] -> [2, n, I]): strided Slices cost more than the Gemm.
        halves = self.add("Transpose", [self.add("Reshape", [gate_up, self.const([0, self.intermediate, 2])])], perm=[2, 0, 1])
        gate = self.add("Gather", [halves, self.const(0)], axis=0)
        up = self.add("Gather", [halves, self.const(1)], axis=0)
        if self.limit is not None:
            gate = self.add("Min", [gate, self.const(self.limit, np.float32)])
            up = self.add("Clip", [up, self.const(-self.limit, np.float32), self.const(self.limit, np.float32)])
        scaled = gate if self.alpha == 1.0 else self.add("Mul", [gate, self.const(self.alpha, np.float32)])
        if self.beta != 0.0:
            up = self.add("Add", [up, self.const(self.beta, np.float32)])
        act = self.add("Mul", [self.add("Mul", [gate, self.add("Sigmoid", [scaled])]), up])
        if _FC2_BIAS in self.experts:
            return self.add("Mul", [self.add("Gemm", [act, self.experts[_FC2][e], self.experts[_FC2_BIAS][e]], transB=1), scale])
        return self.add("Gemm", [self.add("Mul", [act, scale]), self.experts[_FC2][e]], transB=1)  # [n, H]

    def bias(self, position: int, e: int) -> list[str]:
        return [self.experts[position][e]] if position in self.experts else []


class _HalvedNode(_Branch):
    """The few-token branch of one MoE node: the node on its experts in EXPERT_SLICES slices of their
    intermediate channels, slice-major (`onnxruntime.ort_expert_layout`'s order), gathered from a view
    of each of the node's own tensors (constant indices: folded when the session starts); the
    choice made here and handed to the node as logits that select it (log w at the chosen experts,
    -inf elsewhere), given once per slice. Its output times slices·Σw is the node's."""

    def __init__(self, prefix: str, node, stacked: dict, new_initializers):
        super().__init__(prefix, node, f"{node.output[0]}.fused", stacked[_FC1].dims[0])
        self.name, self.stacked, self.new_initializers = node.name, stacked, new_initializers

    def graph(self):
        weights, experts = self.route()  # the node's own choice, in its order
        total = self.add("ReduceSum", [weights, self.const([-1])], keepdims=1)  # [T, 1]
        log_weights = self.add("Log", [self.add("Max", [weights, self.const(SMALLEST_WEIGHT, np.float32)])])
        unchosen = self.add("Expand", [self.const(-np.inf, np.float32), self.add("Shape", [self.logits])])
        selecting = self.add("ScatterElements", [unchosen, experts, log_weights], axis=1)  # [T, E]
        inputs = [self.hidden, self.add("Concat", [selecting] * EXPERT_SLICES, axis=1), *self.weights()]
        attrs = {**self.attrs, "k": self.k * EXPERT_SLICES, "normalize_routing_weights": 0}
        self.nodes.append(helper.make_node("MoE", inputs, [f"{self.prefix}.node"], name=f"{self.name}.halves",
                                           domain=MS_DOMAIN, **attrs))
        scale = self.add("Mul", [total, self.const(float(EXPERT_SLICES), np.float32)])
        self.add("Mul", [f"{self.prefix}.node", scale], [self.output])
        return super().graph()

    def weights(self) -> list[str]:
        """fc1, its bias, fc2, its bias in slices, as the node's inputs ('' where it has none)."""
        count, slices = self.count, EXPERT_SLICES
        by_slice = self.const([e * slices + part for part in range(slices) for e in range(count)])  # [slices·E]
        fc1, *_ = self.stacked[_FC1].dims[1:]  # [E, 2I, H]: each slice a run of rows
        hidden, width = self.stacked[_FC2].dims[1:]  # [E, H, I]: each slice a run of columns
        fc2 = self.reshaped(_FC2, [count, hidden, slices, width // slices])
        inputs = [self.add("Gather", [self.reshaped(_FC1, [count * slices, fc1 // slices, *self.stacked[_FC1].dims[2:]]),
                                      by_slice], axis=0), "",
                  self.add("Concat", [self.add("Gather", [fc2, self.const(part)], axis=2) for part in range(slices)], axis=0), ""]
        if _FC1_BIAS in self.stacked:
            inputs[1] = self.add("Gather", [self.reshaped(_FC1_BIAS, [count * slices, fc1 // slices]), by_slice], axis=0)
        if _FC2_BIAS in self.stacked:  # on the first slice only, so that it is added once
            zeros = self.const(np.zeros((count * (slices - 1), hidden), np.float32), np.float32)
            inputs[3] = self.add("Concat", [self.stacked[_FC2_BIAS].name, zeros], axis=0)
        return inputs

    def reshaped(self, position: int, dims: list[int]) -> str:
        """The node's tensor at `position` seen as `dims`: a view of its bytes where they are
        external (nothing written), else a copy (as `_per_expert` makes)."""
        stacked, name = self.stacked[position], f"{self.stacked[position].name}{_HALVES_SOURCE}"
        if stacked.data_location == TensorProto.EXTERNAL:
            self.new_initializers.append(_view(stacked, name, dims, 0, _external_length(stacked)))
        else:
            self.new_initializers.append(numpy_helper.from_array(numpy_helper.to_array(stacked).reshape(dims), name))
        return name
