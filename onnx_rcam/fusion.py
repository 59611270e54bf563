"""Keep onnxruntime's forward fusions intact, so the original outputs stay bit-for-bit what they were.

onnxruntime fuses a Conv/Gemm with the activation or Add that reads it, and computes the fused pair with different
rounding. If a generated node also read the Conv's output, the fusion would be skipped and the original logits
would change in their last bits. So where the generated nodes read such a fusion-internal tensor, they read a
reconstruction instead: the other operand subtracted from the Add's result (or from the ReLU's output after it,
where only the support of a product needs it: builder.py's supports), or a private copy of the producer.
"""

from __future__ import annotations

import onnx

from .builder import Builder
from .canonicalize import Canonical
from .forward_copies import copy_producer

_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")
_LINEAR_READERS = _ACTIVATIONS + ("Add", "Sum", "BatchNormalization", "Mul", "Div")
# producer op -> the readers onnxruntime fuses it with (its output then never materialises on its own).
FUSIONS = {"Conv": _LINEAR_READERS, "ConvTranspose": _LINEAR_READERS, "Gemm": _LINEAR_READERS,
           "MatMul": _LINEAR_READERS, "BatchNormalization": _ACTIVATIONS,
           "Pad": ("Conv", "MaxPool", "AveragePool"),
           # A transformer's residual joins: bias + skip + LayerNormalization become SkipLayerNormalization.
           "Add": ("Add", "LayerNormalization")}
_COPIED_CHEAPLY = ("Add",)  # reconstructed by a copy of the op, never from the join it feeds


def protect_fusions(original: onnx.ModelProto, canonical: Canonical, b: Builder) -> None:
    """Rewrite the generated nodes' reads of fusion-internal forward tensors (in place, on b.nodes)."""
    producer = {o: n for n in original.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in original.graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in original.graph.output}

    def fusion_internal(name: str) -> bool:
        source, sinks = producer.get(name), readers.get(name, [])
        return (source is not None and name not in outputs and len(sinks) == 1
                and sinks[0].op_type in FUSIONS.get(source.op_type, ()))

    copies: dict[str, str] = {}  # fusion-internal tensor -> a private copy of its producer
    differences: dict[tuple[str, str], str] = {}  # (tensor, total) -> total - the join's other operand

    def copy(name: str) -> str:
        if name not in copies:
            copies[name] = copy_producer(canonical, name, b)
            duplicate = b.nodes[-1]  # its own reads of fused tensors need the same care
            duplicate.input[:] = [reconstruction(duplicate, i) if fusion_internal(i) else i for i in duplicate.input]
        return copies[name]

    def join_of(name: str) -> tuple[onnx.NodeProto, str] | None:
        """The two-input Add or Sum that `name` is fused into, and its other operand, if that is its reader."""
        join = readers[name][0]
        others = [i for i in join.input if i != name]
        if join.op_type in ("Add", "Sum") and len(join.input) == 2 and len(others) == 1:
            return join, others[0]
        return None

    def reconstruction(node: onnx.NodeProto, name: str) -> str:
        joined = join_of(name)
        if name in copies or joined is None or producer[name].op_type in _COPIED_CHEAPLY \
                or fusion_internal(joined[0].output[0]):  # the join's own output may be fused further on
            return copy(name)
        join, other = joined
        # Where node's output vanishes wherever y = Relu(join) does, y - other serves for join - other (they agree
        # wherever y != 0), and the join stays fused with its ReLU.
        y = b.equal_where_nonzero.get(join.output[0])
        total = y if y in b.vanishes_with(node, name) else join.output[0]
        if (name, total) not in differences:
            subtrahend = copy(other) if fusion_internal(other) else other
            with b.per_sample():  # a forward value: on the model's batch, in the model's type (precision.py)
                difference = b.sub(total, subtrahend)
            b.forward_copies[difference] = name
            differences[(name, total)] = difference
        return differences[(name, total)]

    b.rewrite_reads(lambda node, name: reconstruction(node, name) if fusion_internal(name) else name)
