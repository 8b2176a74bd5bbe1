"""linear_default_rewrites: the default rewrite rules give the same graph, without the quadratic scan."""

import onnx
import onnx_ir as ir
import onnxscript.rewriter
from onnx import TensorProto, helper

from moe_compile.export.rewrite_speed import _multi_output_rules, linear_default_rewrites


def two_slices_and_a_transpose() -> ir.Model:
    """x[:, 2:] and x[:, :2] (SlicesSplit makes them one Split) beside a Transpose no rule touches.
    In this order: onnxscript 0.7 pairs each Slice with the graph's first Slice that matches the
    pattern, and gives up if that pair fails the rule's check."""
    ints = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "two", "four", "one"], ["b"]),
         helper.make_node("Slice", ["x", "zero", "two", "one"], ["a"]),
         helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])],
        "slices",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
         for name, shape in (("a", [3, 2]), ("b", [3, 2]), ("t", [4, 3]))],
        [ints("zero", [0]), ints("two", [2]), ints("four", [4]), ints("one", [1])])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def op_types(model: ir.Model) -> list[str]:
    return sorted(node.op_type for node in model.graph)


def test_the_multi_output_rule_is_found_and_restored_afterwards():
    rules = _multi_output_rules()
    assert [identifier[1] for _, identifier in rules] == ["Slice"]  # SlicesSplit, in onnxscript 0.7
    matchers = [rule._matcher for rule, _ in rules]
    with linear_default_rewrites():
        assert all(rule._matcher is not matcher for (rule, _), matcher in zip(rules, matchers))
    assert [rule._matcher for rule, _ in rules] == matchers


def test_default_rewrites_give_the_same_graph_inside_and_outside():
    plain, checked = two_slices_and_a_transpose(), two_slices_and_a_transpose()
    onnxscript.rewriter.rewrite(plain)
    with linear_default_rewrites():
        onnxscript.rewriter.rewrite(checked)
    assert op_types(checked) == op_types(plain) == ["Split", "Transpose"]  # SlicesSplit still fires
    onnx.checker.check_model(ir.serde.serialize_model(checked))
