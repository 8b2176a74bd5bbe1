"""Keep onnxscript's default rewrite pass linear in the graph's size.

torch.onnx's optimize step runs onnxscript's default rewrite rules at every node. One of them,
SlicesSplit (two Slices of one tensor -> one Split), has a pattern with two output nodes, and
onnxscript 0.7's SimplePatternMatcher handles such a pattern by indexing every node of the graph by
op type before it looks at the node it was given: the pass is quadratic in the number of nodes.
The given node must match the pattern's first output node, so a node of any other op type cannot
match: checking that first returns the same graph without the scan (benchmarks/export_rewrite_ab.py:
the demo's export, 56 s with the scan, 44 s without, on a 2-core CPU). Where onnxscript's
internals differ, nothing is changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _OpTypeFirst:
    """A matcher that rejects a node whose op is not its pattern's first output node's op before
    handing the node to the matcher it wraps."""

    def __init__(self, inner, domain: str, op_type: str):
        self.inner, self.domain, self.op_type = inner, domain, op_type

    def match(self, model, graph_or_function, node, **options):
        if node.op_type != self.op_type or node.domain != self.domain:
            from onnxscript.rewriter._basics import MatchResult

            return MatchResult().fail(f"not a {self.op_type} node")
        return self.inner.match(model, graph_or_function, node, **options)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _multi_output_rules() -> list:
    try:
        from onnxscript.rewriter import _DEFAULT_REWRITE_RULES
    except ImportError:
        return []
    rules = []
    for rule in _DEFAULT_REWRITE_RULES:
        pattern, matcher = getattr(rule, "_target_pattern", None), getattr(rule, "_matcher", None)
        if pattern is None or matcher is None or getattr(pattern, "has_single_output_node", True):
            continue
        identifier = pattern.output_nodes[0].op_identifier()
        if identifier is not None:  # (domain, op_type, overload); None: the pattern takes any op
            rules.append((rule, identifier))
    return rules


@contextlib.contextmanager
def linear_default_rewrites() -> Iterator[None]:
    """While inside, the default rules with multi-output patterns check the node's op first."""
    wrapped = []
    for rule, (domain, op_type, _) in _multi_output_rules():
        wrapped.append((rule, rule._matcher))
        rule._matcher = _OpTypeFirst(rule._matcher, domain, op_type)
    try:
        yield
    finally:
        for rule, matcher in wrapped:
            rule._matcher = matcher
