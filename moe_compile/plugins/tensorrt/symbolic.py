"""Sizes in the token count T as expressions: a stand-in for TensorRT's shape expressions.

At build time TensorRT hands the plugin T as a symbolic `ShapeExpr`; every size derived from it
(slots, chunks, row blocks, grids) is an expression TensorRT evaluates when T is known. `Sym`
mirrors the operations of those expressions that LaunchPlan uses (`+ - * //` with the symbolic
operand on the left, ceil-division, minimum), so that code written against it runs unchanged
against TensorRT, and it can be evaluated for a given T (tests, benchmarks/aot_check.py).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from moe_compile.plugins.grouped_moe.launch_plan import SizeOps, cdiv


class Sym:
    """An integer expression in T; `Sym.tokens()` is T itself."""

    def __init__(self, evaluate: Callable[[int], int], text: str):
        self._evaluate, self.text = evaluate, text

    @classmethod
    def tokens(cls) -> Sym:
        return cls(lambda t: t, "T")

    def __call__(self, tokens: int) -> int:
        return self._evaluate(tokens)

    def __repr__(self) -> str:
        return self.text

    def _op(self, other: Sym | int, fn: Callable[[int, int], int], symbol: str) -> Sym:
        if isinstance(other, Sym):
            return Sym(lambda t: fn(self(t), other(t)), f"({self} {symbol} {other})")
        if isinstance(other, int):
            return Sym(lambda t: fn(self(t), other), f"({self} {symbol} {other})")
        return NotImplemented

    def __add__(self, other):
        return self._op(other, operator.add, "+")

    def __sub__(self, other):
        return self._op(other, operator.sub, "-")

    def __mul__(self, other):
        return self._op(other, operator.mul, "*")

    def __floordiv__(self, other):
        return self._op(other, operator.floordiv, "//")


def evaluate(value: Sym | int, tokens: int) -> int:
    return value(tokens) if isinstance(value, Sym) else value


def lifted_ops(symbolic_cdiv: Callable, symbolic_min: Callable) -> SizeOps:
    """SizeOps that compute in Python when both operands are ints (TensorRT's functions refuse
    two ints) and otherwise build the symbolic expression."""
    def both_ints(a, b) -> bool:
        return isinstance(a, int) and isinstance(b, int)

    return SizeOps(cdiv=lambda a, b: cdiv(a, b) if both_ints(a, b) else symbolic_cdiv(a, b),
                   minimum=lambda a, b: min(a, b) if both_ints(a, b) else symbolic_min(a, b))


def _first_symbolic(a, b) -> Sym:
    return a if isinstance(a, Sym) else Sym(lambda t: a, str(a))


SYM_OPS = lifted_ops(lambda a, b: _first_symbolic(a, b)._op(b, cdiv, "cdiv"),
                     lambda a, b: _first_symbolic(a, b)._op(b, min, "min"))
