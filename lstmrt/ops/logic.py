"""Comparisons, boolean logic and Where."""
from __future__ import annotations

import numpy as np

from . import op

_BINARY = {"Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
           "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


@op(*_BINARY)
def _compare(node):
    fn = _BINARY[node.op_type]
    return lambda inputs: [np.asarray(fn(inputs[0], inputs[1]))]


@op("Not")
def _not(node):
    return lambda inputs: [np.logical_not(inputs[0])]


@op("Where")
def _where(node):
    return lambda inputs: [np.where(inputs[0], inputs[1], inputs[2])]
