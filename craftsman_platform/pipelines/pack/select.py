"""`select=`: which objects go into a pack, as an expression over the archive manifest's columns.

    chamfer < 0.02 and parts_lost == 0
    watertight_method == "udf" or sign_agreement >= 0.999
    lvis_category in ["chair", "mug"] and not (n_sharp > 1000)

Comparisons (<, <=, >, >=, ==, !=, in, not in), `and`, `or`, `not`, parentheses, numbers, strings,
lists of them, True/False/None. Parsed with `ast` and evaluated column-wise: nothing is `eval`ed.
A name that is not a column is an error naming it (and listing the columns).
"""

from __future__ import annotations

import ast
import operator

import numpy as np
import pandas as pd

from craftsman_platform.errors import ConfigError

_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def column_names(expression: str | None) -> list[str]:
    """The names an expression uses (the manifest columns to read for it); [] if it does not parse."""
    try:
        tree = ast.parse(expression or "", mode="eval")
    except SyntaxError:
        return []
    return sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})


def select_rows(table: pd.DataFrame, expression: str | None) -> pd.Series:
    """A boolean mask over `table`'s rows (all True without an expression)."""
    if not expression:
        return pd.Series(True, index=table.index)
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"select={expression!r}: not an expression ({err.msg})") from None
    mask = _Evaluator(table, expression).visit(tree.body)
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise ConfigError(f"select={expression!r}: is not a condition (true or false per object)")
    return mask


class _Evaluator(ast.NodeVisitor):
    def __init__(self, table: pd.DataFrame, expression: str):
        self.table, self.expression = table, expression

    def fail(self, what: str):
        raise ConfigError(f"select={self.expression!r}: {what}")

    def generic_visit(self, node):
        self.fail(f"{type(node).__name__} is not allowed (comparisons, and/or/not, constants, lists)")

    def visit_Name(self, node):
        if node.id not in self.table.columns:
            known = self.table.attrs.get("columns", self.table.columns)  # a table read with some columns only
            self.fail(f"unknown column {node.id!r} (columns: {', '.join(map(str, known))})")
        return self.table[node.id]

    def visit_Constant(self, node):
        return node.value

    def visit_List(self, node):
        return [self.visit(e) for e in node.elts]

    visit_Tuple = visit_List

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            return ~_as_mask(self.visit(node.operand))
        if isinstance(node.op, ast.USub):
            return -self.visit(node.operand)
        self.fail(f"operator {type(node.op).__name__} is not allowed")

    def visit_BoolOp(self, node):
        masks = [_as_mask(self.visit(v)) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        out = masks[0]
        for m in masks[1:]:
            out = combine(out, m)
        return out

    def visit_Compare(self, node):
        left, out = self.visit(node.left), None
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, list) or not isinstance(left, pd.Series):
                    self.fail("`in` needs a column on the left and a list on the right")
                part = left.isin(right)
                part = ~part if isinstance(op, ast.NotIn) else part
            elif type(op) in _COMPARE:
                part = _COMPARE[type(op)](left, right)
            else:
                self.fail(f"comparison {type(op).__name__} is not allowed")
            out = part if out is None else out & part
            left = right
        return _as_mask(out)


def _as_mask(value) -> pd.Series:
    if isinstance(value, pd.Series):
        return value.fillna(False).astype(bool)
    raise ConfigError(f"select: {value!r} is not a condition over columns")
