"""Emits the generated ONNX nodes: one small method per op, each returning the name of the tensor it creates.

`None` stands for a tensor known to be zero, so rules can skip terms (x- of a non-negative input, W- of a pooling
op) without special cases: arithmetic on `None` folds away at augment time instead of running at inference.

Supports: the builder tracks, for the tensors its products, quotients and sums create, the tensors they vanish with
(a product is 0 wherever a factor is). With the propagators' `equal_where_nonzero` facts (y = Relu(z) equals z
wherever y != 0) a rule may read y for z where only the support of its relevance matters (`on_support`): a
residual join then stabilises its ReLU's output, which the model computes anyway, not the fused sum it never
materialises, and no sign test runs at all.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InternalError, RcamError
from .load import MIN_OPSET

PREFIX = "rcam/"

# The backward pass's float type. fp32 by default, whatever the model's; fp16 on request (--precision fp16).
# tiny: the offset that keeps a one-sign denominator off 0 (rules/base.py). In fp32, 1e-20 vanishes in any |z| above
# 4e-13. fp16 has no such number: 2^-12 is the least offset whose quotients stay finite (below 65504) for relevance up
# to 16, and |z| above 0.5 absorbs it. It is also the least stabiliser an epsilon gets in fp16.
PRECISIONS = {"fp32": (np.float32, TensorProto.FLOAT, 1e-20), "fp16": (np.float16, TensorProto.FLOAT16, 2.0 ** -12)}


class Builder:
    def __init__(self, opset: int, taken_names: set[str], nonnegative: set[str] = frozenset(),
                 precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise RcamError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if opset < MIN_OPSET:  # every emission below assumes opset 17 semantics or later (axes as inputs, ...)
            raise InternalError(f"internal error: generating nodes for opset {opset}; load() upgrades to {MIN_OPSET}")
        self.float_dtype, self.float_type, self.tiny = PRECISIONS[precision]
        self.opset = opset
        self.nonnegative = nonnegative  # forward tensors known to be >= 0: their x- is exactly zero
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = set(taken_names)
        self._counter = 0
        self._constants: dict[tuple, str] = {}
        self.per_sample_nodes: set[str] = set()  # nodes that work on the model's own batch (see batching.py)
        # forward tensors the generated nodes compute -> the canonical tensor each copies (forward_copies.py)
        self.forward_copies: dict[str, str] = {}
        self.supports: dict[str, frozenset[str]] = {}  # tensor -> tensors it is 0 wherever they are 0
        self.equal_where_nonzero: dict[str, str] = {}  # z -> y: z == y wherever y != 0 (y = Relu(z))
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[tuple[str, int, list]] = []  # (name, elem_type, shape) of each added output

    # -- naming -----------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new tensor name under the rcam/ prefix that collides with nothing in the model."""
        while True:
            self._counter += 1
            name = f"{PREFIX}{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def claim(self, name: str) -> str:
        """Reserve an exact name (a contract output); a clash with the model's own names is a user-facing error."""
        if name in self._taken:
            raise RcamError(f"the model already has a tensor named {name!r}: was it augmented before?")
        self._taken.add(name)
        return name

    def add_input(self, name: str, default: np.ndarray | None, shape: list, dtype=np.float32) -> str:
        """A new graph input that may be omitted, its initializer of the same name the default; without a default,
        an input that must be fed (of `dtype`)."""
        self.claim(name)
        elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype if default is None else default.dtype))
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        if default is not None:
            self.initializers.append(numpy_helper.from_array(default, name))
        return name

    @property
    def inputs_by_name(self) -> set[str]:
        return {i.name for i in self.inputs}

    def add_output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append((name, elem_type, shape))

    def node(self, op: str, inputs: list[str], hint: str | None = None, outputs: int = 1, out: str | None = None,
             domain: str = "", **attrs) -> str | list[str]:
        names = [out] if out is not None else [self.fresh(hint or op.lower()) for _ in range(outputs)]
        node_name = self.fresh(f"node/{op}")
        self.nodes.append(helper.make_node(op, inputs, names, name=node_name, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, hint: str = "const", dtype=None) -> str:
        """An initializer holding `value`, of the backward's float type unless `dtype` says otherwise."""
        array = np.asarray(value, dtype=dtype or self.float_dtype)
        small = array.size <= 16
        key = (array.dtype.str, array.shape, array.tobytes()) if small else None
        if key is not None and key in self._constants:
            return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._constants[key] = name
        return name

    def ints(self, values, hint: str = "ints") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint, np.int64)

    def toposorted(self, available: set[str]) -> list[onnx.NodeProto]:
        """The generated nodes, each after the nodes that compute its inputs (`available`: what the model holds);
        stable otherwise. Passes that rewrite reads put new nodes first, which may read forward copies made later.
        A read of a tensor that nothing computes (a canonicalize rename) is an internal error."""
        ready = set(available) | {""}
        pending, ordered = list(self.nodes), []
        while pending:
            waiting = []
            for node in pending:
                if all(name in ready for name in node.input):
                    ordered.append(node)
                    ready.update(node.output)
                else:
                    waiting.append(node)
            if len(waiting) == len(pending):
                raise InternalError(f"internal error: generated node {waiting[0].name!r} reads "
                                    f"{[i for i in waiting[0].input if i not in ready][:3]}, which nothing computes")
            pending = waiting
        return ordered

    def rewrite_reads(self, replace) -> None:
        """Pass every input of the nodes emitted so far through `replace(node, name) -> name`. Nodes that `replace`
        emits go ahead of them all: they compute forward values for them (fusion.py, batching.py)."""
        existing, self.nodes = self.nodes, []
        for node in existing:
            node.input[:] = [replace(node, name) for name in node.input]
        self.nodes.extend(existing)

    # -- supports -------------------------------------------------------------------------------------------------
    def support_of(self, name: str) -> frozenset[str]:
        """The tensors `name` is 0 wherever they are 0 (itself among them)."""
        return self.supports.get(name, frozenset()) | {name}

    def on_support(self, z: str, relevance: str | None) -> str:
        """A tensor equal to z wherever `relevance` is non-zero: z itself, or y where z == y wherever y != 0 and the
        relevance vanishes wherever y does."""
        y = self.equal_where_nonzero.get(z)
        return y if relevance is not None and y in self.support_of(relevance) else z

    def vanishes_with(self, node: onnx.NodeProto, name: str) -> frozenset[str]:
        """Tensors wherever whose zeros `node`'s output is 0, whatever its input `name` holds there."""
        if node.op_type == "Mul" and len(node.input) == 2:
            others = [i for i in node.input if i != name]
            return self.support_of(others[0]) if len(others) == 1 else frozenset()
        return frozenset()

    @contextmanager
    def per_sample(self):
        """Mark the nodes emitted inside as working on the model's batch of N, never on the N*K explained pairs."""
        start = len(self.nodes)
        yield
        self.per_sample_nodes.update(n.name for n in self.nodes[start:])

    # -- arithmetic, with None as an exact zero --------------------------------------------------------------
    def add(self, a: str | None, b: str | None) -> str | None:
        if a is None:
            return b
        if b is None:
            return a
        return self.node("Add", [a, b])

    def sum(self, terms) -> str | None:
        present = [t for t in terms if t is not None]
        if not present:
            return None
        if len(present) == 1:
            return present[0]
        total = self.node("Sum", present)
        self.supports[total] = frozenset.intersection(*(self.support_of(t) for t in present))
        return total

    def sub(self, a: str, b: str) -> str:
        return self.node("Sub", [a, b])

    def mul(self, a: str | None, b: str | None) -> str | None:
        if a is None or b is None:
            return None
        product = self.node("Mul", [a, b])
        self.supports[product] = self.support_of(a) | self.support_of(b)
        return product

    def scale(self, x: str | None, factor: float) -> str | None:
        if x is None or factor == 0:
            return None
        if factor == 1:
            return x
        return self.mul(x, self.const(factor))

    def div(self, a: str, b: str) -> str:
        quotient = self.node("Div", [a, b])
        self.supports[quotient] = self.support_of(a)
        return quotient

    def relu(self, x: str) -> str:
        return x if x in self.nonnegative else self.node("Relu", [x])

    def negative_part(self, x: str) -> str | None:
        return None if x in self.nonnegative else self.node("Min", [x, self.const(0.0)], "neg_part")

    def where(self, cond: str, a: str, b: str) -> str:
        return self.node("Where", [cond, a, b])

    def equal(self, a: str, b: str) -> str:
        return self.node("Equal", [a, b])

    def greater(self, a: str, b: str) -> str:
        return self.node("Greater", [a, b])

    def greater_or_equal(self, a: str, b: str) -> str:
        return self.node("GreaterOrEqual", [a, b])

    def less(self, a: str, b: str) -> str:
        return self.node("Less", [a, b])

    def and_(self, a: str, b: str) -> str:
        return self.node("And", [a, b])

    def cast(self, x: str, to: int) -> str:
        return self.node("Cast", [x], to=to)

    def identity(self, x: str, out: str | None = None) -> str:
        return self.node("Identity", [x], out=out)

    def as_float32(self, x: str, out: str | None = None) -> str:
        """x as float32 (the contract's type for every float output), named `out`."""
        if self.float_type == TensorProto.FLOAT:
            return self.identity(x, out=out)
        return self.node("Cast", [x], out=out, to=TensorProto.FLOAT)

    def zeros(self, shape: str) -> str:
        """Zeros of the backward's float type, of the shape held in the int64 tensor `shape`."""
        return self.node("ConstantOfShape", [shape], value=helper.make_tensor("zero", self.float_type, [1], [0.0]))

    # -- guarded division: no input may produce NaN or Inf (docs/design.md section 1) --------------------------
    def div_or_zero(self, numerator: str, denominator: str) -> str:
        """numerator / denominator, and 0 where the denominator is exactly 0 (rules/base.py's one_sign_sum is the
        cheaper guard where the denominator's terms share a sign)."""
        zero = self.const(0.0)
        is_zero = self.equal(denominator, zero)
        safe = self.where(is_zero, self.const(1.0), denominator)
        return self.where(is_zero, zero, self.div(numerator, safe))

    def stabilize(self, z: str, eps: float, dtype=None) -> str:
        """z + eps * sign(z) with sign(0) = +1 (eps at least `tiny` in fp16, whose range ends at 65504)."""
        if (dtype or self.float_dtype) == np.float16:
            eps = max(eps, self.tiny)
        if z in self.nonnegative:
            return self.add(z, self.const(eps, dtype=dtype))
        nonneg = self.greater_or_equal(z, self.const(0.0, dtype=dtype))
        return self.add(z, self.where(nonneg, self.const(eps, dtype=dtype), self.const(-eps, dtype=dtype)))

    # -- shapes ------------------------------------------------------------------------------------------------
    def shape(self, x: str) -> str:
        return self.node("Shape", [x])

    def reshape(self, x: str, shape: str) -> str:
        return self.node("Reshape", [x, shape])

    def reshape_like(self, x: str, like: str) -> str:
        return self.reshape(x, self.shape(like))

    def transpose(self, x: str, perm) -> str:
        return self.node("Transpose", [x], perm=list(perm))

    def unsqueeze(self, x: str, axes) -> str:
        return self.node("Unsqueeze", [x, self.ints(axes)])

    def squeeze(self, x: str, axes, out: str | None = None) -> str:
        return self.node("Squeeze", [x, self.ints(axes)], out=out)

    def expand(self, x: str, shape: str) -> str:
        return self.node("Expand", [x, shape])

    def slice(self, x: str, starts, ends, axes) -> str:
        return self.node("Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)])

    def concat(self, xs: list[str], axis: int) -> str:
        return self.node("Concat", xs, axis=axis)

    # -- reductions: the axes moved from attribute to input at opset 18 ------------------------------------
    def _reduce(self, op: str, x: str, axes, keepdims: bool) -> str:
        axes = list(axes)
        if not axes:
            # A reduction over no axes is the identity; emitted, ReduceSum (opset 13 on) and every reduction from
            # opset 18 on would read an empty axes list as "all axes".
            return x
        keep = int(keepdims)
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [x, self.ints(axes)], keepdims=keep)
        return self.node(op, [x], axes=list(axes), keepdims=keep)

    def reduce_sum(self, x: str, axes, keepdims: bool = True) -> str:
        return self._reduce("ReduceSum", x, axes, keepdims)

    def reduce_max(self, x: str, axes, keepdims: bool = True) -> str:
        return self._reduce("ReduceMax", x, axes, keepdims)

    def reduce_min(self, x: str, axes, keepdims: bool = True) -> str:
        return self._reduce("ReduceMin", x, axes, keepdims)

    def argmax(self, x: str, axis: int) -> str:
        return self.node("ArgMax", [x], axis=axis, keepdims=0)

    # -- linear ops --------------------------------------------------------------------------------------------
    def conv(self, x: str, weight: str, *bias: str, **attrs) -> str:
        return self.node("Conv", [x, weight, *bias], **attrs)

    def conv_transpose(self, g: str, weight: str, **attrs) -> str:
        return self.node("ConvTranspose", [g, weight], **attrs)

    def matmul(self, a: str, b: str) -> str:
        return self.node("MatMul", [a, b])

    def resize_linear(self, x: str, sizes: str) -> str:
        return self.node("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
