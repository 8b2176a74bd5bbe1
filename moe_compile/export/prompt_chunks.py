"""A long prompt's GroupQueryAttention run over chunks of query rows: ONNX Loops, one call per chunk.

ONNX Runtime's CPU GroupQueryAttention (export/lowering/prompt_attention.py) computes only the
causal half of a prompt's scores, but into a probabilities buffer of [heads, S, S] that it
allocates at every call: 134 MiB for 8 heads at 2048 tokens, 8.6 GB for 32 heads at 8192. In
the whole model, with the layers' other buffers around it, the node ran slower than alone (at 2048
tokens 50-66 ms a layer under ONNX Runtime's profiler against 35 ms for the same node alone,
onnx_speed.py's model).

So each such node is run on chunks of CHUNK_ROWS query rows. Chunk i is the same node on rows
[i·C, (i+1)·C) of the query, key and value, with the keys and values of the chunks before it as
its past: the node's own "subsequent prompt" case, whose present (past and chunk together) the
next chunk takes as its past. Each call's buffer is [heads, C, ≤ S]; the scores are the same
ones, the masked half still skipped. The node takes a past with several new rows only at batch
1, so an outer Loop takes the batch's sequences one at a time. The prompt is padded to whole
chunks with zero rows at its end, which no real row attends to (they come after it), and the
padded rows' outputs are cut off. Measured: benchmarks/prompt_chunks_ab.py, docs/export.md.

    pads, past = the rows up to a whole number of chunks, an empty [1, KV, 0, D]
    Loop over the sequences b:
        Loop over the chunks i:  output_b_i, past = GroupQueryAttention(rows i of Pad(q, k, v)[b], past)
    output     = the outputs joined along the sequence, cut to S rows

Only a node with nothing cached is rewritten (the export's prompt kernel); its present outputs
must be unread (the kernel's are: the grouped branch computes the cache).
"""

from __future__ import annotations

from onnx import TensorProto, helper

from .lowering.ort_support import MS_DOMAIN
from .subgraphs import all_nodes, subgraphs

CHUNK_ROWS = 128  # query rows per call; measured: benchmarks/prompt_chunks_ab.py, docs/export.md
_QUERY, _KEY, _VALUE, _PAST_KEY, _PAST_VALUE = range(5)  # GroupQueryAttention's inputs


def chunk_prompt_attention(graph, elem_type: int, rows: int | None = None) -> int:
    """In place, in `graph` (a GraphProto) and its subgraphs: every GroupQueryAttention with nothing
    cached becomes a Loop over chunks of `rows` (CHUNK_ROWS) query rows -> how many. `elem_type`:
    the attention's element type (onnx.TensorProto), which the Loop body's declarations name."""
    rows = rows or CHUNK_ROWS
    read = {name for node in all_nodes(graph.node) for name in node.input} | {output.name for output in graph.output}
    count = 0
    for holder in list(_graphs(graph)):  # listed first: the Loops written below hold the node again
        kernels = [node for node in holder.node if _whole_prompt_kernel(node)]
        if not kernels:
            continue
        for node in kernels:
            if read.intersection(node.output[1:]):
                raise RuntimeError(f"{node.name}: its present key and value are read; only the output can be chunked")
        nodes = [new for node in holder.node
                 for new in (_chunked(node, elem_type, rows) if _whole_prompt_kernel(node) else [node])]
        del holder.node[:]
        holder.node.extend(nodes)
        count += len(kernels)
    return count


def _graphs(graph):
    """`graph` and every graph inside its nodes, depth first."""
    yield graph
    for node in graph.node:
        for inner in subgraphs(node):
            yield from _graphs(inner)


def _whole_prompt_kernel(node) -> bool:
    return (node.op_type == "GroupQueryAttention" and node.domain == MS_DOMAIN
            and not any(node.input[_PAST_KEY:_PAST_VALUE + 1]))


def _chunked(node, elem_type: int, rows: int) -> list:
    """The nodes that compute `node`'s output sequence by sequence, chunk by chunk."""
    query, key, value = node.input[_QUERY], node.input[_KEY], node.input[_VALUE]
    kv_heads = next(attr.i for attr in node.attribute if attr.name == "kv_num_heads")
    p = f"{node.output[0]}.chunks"
    v = _under(p)
    return [
        *(_ints(v(name), *values) for name, values in (("rows", [rows]), ("rows_less_one", [rows - 1]), ("zero", [0]),
                                                      ("one", [1]), ("sequence_axis", [1]), ("kv_heads", [kv_heads]),
                                                      ("any", [-1]))),
        _node("Constant", [], v("go_on"), value=helper.make_tensor(v("go_on"), TensorProto.BOOL, [], [True])),
        _node("Shape", [query], v("batch"), start=0, end=1),
        _node("Shape", [query], v("length"), start=1, end=2),
        _node("Shape", [query], v("width"), start=2, end=3),
        _node("Add", [v("length"), v("rows_less_one")], v("length_up")),
        _node("Div", [v("length_up"), v("rows")], v("count")),
        _node("Squeeze", [v("count"), v("zero")], v("trips")),
        _node("Mul", [v("count"), v("rows")], v("padded")),
        _node("Sub", [v("padded"), v("length")], v("pad")),
        _node("Concat", [v("zero")] * 4 + [v("pad"), v("zero")], v("pads"), axis=0),
        *(_node("Pad", [operand, v("pads")], v(f"padded_{part}"))
          for operand, part in ((query, "query"), (key, "key"), (value, "value"))),
        # the first chunk's past: [1, KV, 0, D], empty
        _node("Shape", [key], v("key_width"), start=2, end=3),
        _node("Div", [v("key_width"), v("kv_heads")], v("head_size")),
        _node("Concat", [v("one"), v("kv_heads"), v("zero"), v("head_size")], v("past_shape"), axis=0),
        _node("ConstantOfShape", [v("past_shape")], v("empty_past"), value=helper.make_tensor(v("fill"), elem_type, [1], [0])),
        _node("Concat", [v("one"), v("any"), v("width")], v("sequence_shape"), axis=0),
        _node("Squeeze", [v("batch"), v("zero")], v("sequences")),
        _node("Loop", [v("sequences"), v("go_on")], v("by_sequence"), body=_sequence_body(node, p, elem_type)),
        # [B, 1, chunks·C, H·D] -> [B, chunks·C, H·D] -> the first S rows
        _node("Concat", [v("batch"), v("any"), v("width")], v("joined_shape"), axis=0),
        _node("Reshape", [v("by_sequence"), v("joined_shape")], v("joined")),
        helper.make_node("Slice", [v("joined"), v("zero"), v("length"), v("sequence_axis")], [node.output[0]], name=v("cut")),
    ]


def _sequence_body(node, p: str, elem_type: int):
    """The outer Loop's body: sequence `iteration` of the padded batch, its chunks in turn (ONNX
    Runtime's GroupQueryAttention takes a past with several new rows only at batch 1)."""
    v, b = _under(p), _under(f"{p}.sequence")
    nodes = [
        _node("Mul", [b("iteration"), v("one")], b("first")),
        _node("Add", [b("first"), v("one")], b("end")),
        *(_node("Slice", [v(f"padded_{part}"), b("first"), b("end"), v("zero")], b(part)) for part in ("query", "key", "value")),
        _node("Loop", [v("trips"), v("go_on"), v("empty_past"), v("empty_past")],
              [b("present_key"), b("present_value"), b("chunks")], body=_chunk_body(node, p, elem_type)),
        _node("Reshape", [b("chunks"), v("sequence_shape")], b("output")),  # [chunks, 1, C, H·D] -> [1, chunks·C, H·D]
        _node("Identity", [b("go_on")], b("go_on_after")),
    ]
    return helper.make_graph(
        nodes, b("body"), [_declared(b("iteration"), TensorProto.INT64, []), _declared(b("go_on"), TensorProto.BOOL, [])],
        [_declared(b("go_on_after"), TensorProto.BOOL, []), _declared(b("output"), elem_type)])


def _chunk_body(node, p: str, elem_type: int):
    """The inner Loop's body: chunk `iteration` of one sequence, after the chunks before it (the past)."""
    v, s, b = _under(p), _under(f"{p}.sequence"), _under(f"{p}.chunk")
    attention = _node("GroupQueryAttention", [b(name) for name in ("query", "key", "value", "past_key", "past_value",
                                                                   "seqlens_k", "total")],
                      [b("output"), b("present_key"), b("present_value")], domain=MS_DOMAIN)
    attention.attribute.extend(node.attribute)
    nodes = [
        _node("Mul", [b("iteration"), v("rows")], b("first")),
        _node("Add", [b("first"), v("rows")], b("end")),
        *(_node("Slice", [s(part), b("first"), b("end"), v("sequence_axis")], b(part)) for part in ("query", "key", "value")),
        # every row is valid: seqlens_k = the rows so far - 1, the total = the rows so far
        _node("Sub", [b("end"), v("one")], b("last")),
        _node("Cast", [b("last")], b("seqlens_k"), to=TensorProto.INT32),
        _node("Squeeze", [b("end"), v("zero")], b("end_scalar")),
        _node("Cast", [b("end_scalar")], b("total"), to=TensorProto.INT32),
        attention,
        _node("Identity", [b("go_on")], b("go_on_after")),
    ]
    return helper.make_graph(
        nodes, b("body"),
        [_declared(b("iteration"), TensorProto.INT64, []), _declared(b("go_on"), TensorProto.BOOL, []),
         _declared(b("past_key"), elem_type), _declared(b("past_value"), elem_type)],
        [_declared(b("go_on_after"), TensorProto.BOOL, []), _declared(b("present_key"), elem_type),
         _declared(b("present_value"), elem_type), _declared(b("output"), elem_type)])


def _under(prefix: str):
    """name -> `prefix`.name: the values of one graph's rewrite, apart from every other's."""
    return lambda name: f"{prefix}.{name}"


def _node(op_type: str, inputs: list[str], outputs, **attrs):
    """A node named after its (first) output."""
    outputs = [outputs] if isinstance(outputs, str) else outputs
    return helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs)


def _ints(name: str, *values: int):
    return _node("Constant", [], name, value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _declared(name: str, elem_type: int, shape=None):
    return helper.make_tensor_value_info(name, elem_type, shape)
