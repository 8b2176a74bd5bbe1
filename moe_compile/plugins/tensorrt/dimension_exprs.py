"""The stages' sizes as TensorRT dimension expressions, for class-based plugins (IPluginV3).

A class-based plugin's `get_output_shapes(inputs, shape_inputs, expr_builder)` receives its input
dimensions as `IDimensionExpr`s, which have no arithmetic: every size is built through
`IExprBuilder.operation(DimensionOperation.X, a, b)` and `IExprBuilder.constant(n)`.
`DimensionExpr` gives them the `+ - * //` that LaunchPlan and StageLayer write, and
`expr_builder_ops` the ceil-division and minimum of `SizeOps`, so the stages' shapes come from
stages.py unchanged (as plugin.py does through `tensorrt.plugin`'s ShapeExpr). Works with any
binding that has these classes (`tensorrt`, `tensorrt_rtx`): the caller passes its module.
"""

from __future__ import annotations

from moe_compile.plugins.grouped_moe.launch_plan import SizeOps

from .symbolic import lifted_ops


class DimensionExpr:
    """An IDimensionExpr with the arithmetic of `symbolic.Sym` (the expression on the left)."""

    def __init__(self, expr, builder, operations):
        self.expr, self._builder, self._operations = expr, builder, operations

    def of(self, value: DimensionExpr | int):
        """The IDimensionExpr of `value` (an int becomes a constant)."""
        return value.expr if isinstance(value, DimensionExpr) else self._builder.constant(value)

    def apply(self, operation: str, other: DimensionExpr | int) -> DimensionExpr:
        op = getattr(self._operations, operation)
        return DimensionExpr(self._builder.operation(op, self.expr, self.of(other)), self._builder, self._operations)

    def __add__(self, other):
        return self.apply("SUM", other)

    def __sub__(self, other):
        return self.apply("SUB", other)

    def __mul__(self, other):
        return self.apply("PROD", other)

    def __floordiv__(self, other):
        return self.apply("FLOOR_DIV", other)


def expr_builder_ops(trt, builder) -> SizeOps:
    """SizeOps over `builder` (an IExprBuilder of the `trt` bindings): ints stay Python ints."""
    def symbolic(operation: str):
        def combine(a, b) -> DimensionExpr:
            left = a if isinstance(a, DimensionExpr) else b
            return DimensionExpr(left.of(a), builder, trt.DimensionOperation).apply(operation, b)
        return combine

    return lifted_ops(symbolic("CEIL_DIV"), symbolic("MIN"))


def dimension(trt, builder, expr) -> DimensionExpr:
    """One of the plugin's input dimensions, ready for stages.py's arithmetic."""
    return DimensionExpr(expr, builder, trt.DimensionOperation)


def dims_exprs(trt, builder, shape: tuple) -> object:
    """A `trt.DimsExprs` from a stages.py shape (ints and DimensionExprs)."""
    return trt.DimsExprs([value.expr if isinstance(value, DimensionExpr) else builder.constant(value)
                          for value in shape])
