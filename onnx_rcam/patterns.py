"""Ops that exporters spell out, recognised as the op they compute (part of canonicalize).

A normalisation written out, as ConvNeXt's channels-first LayerNorm and older exporters' LayerNorm are:

    d = x - ReduceMean(x, A);  n = d / Sqrt(ReduceMean(d^2, A) + eps)     (d^2 as Pow(d, 2) or d * d)

becomes LayerNormalization over the axes A (with Transposes around it where A are not the trailing axes), writing
n's tensor. Its propagator then holds 1/std constant under LRP and takes the full derivative under the gradient, as
for the op itself; spelled out, the Sub of two activations and the Div by a computed tensor would have no rule.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def fold_spelled_out_normalizations(graph: gs.Graph) -> None:
    for div in [n for n in graph.nodes if n.op == "Div"]:
        match = _normalization(div)
        if match is not None:
            _replace(graph, div, *match)


def _producer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs and tensor.inputs[0].op == op \
        else None


def _mean_axes(node: gs.Node | None, rank: int) -> tuple[int, ...] | None:
    """The axes a keepdims ReduceMean averages over (attribute before opset 18, constant input from 18 on)."""
    if node is None or not node.attrs.get("keepdims", 1):
        return None
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.reshape(-1).tolist()
    if not axes:
        return None
    return tuple(sorted(int(a) % rank for a in axes))


def _normalization(div: gs.Node):
    """(x, axes, eps) when `div` computes (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) over axes; else None."""
    centred, root = div.inputs
    sub, sqrt = _producer(centred, "Sub"), _producer(root, "Sqrt")
    if sub is None or sqrt is None:
        return None
    x = sub.inputs[0]
    if x.shape is None:
        return None
    rank = len(x.shape)
    axes = _mean_axes(_producer(sub.inputs[1], "ReduceMean"), rank)
    if axes is None or sub.inputs[1].inputs[0].inputs[0] is not x:
        return None
    add = _producer(sqrt.inputs[0], "Add")
    if add is None:
        return None
    variance, eps = add.inputs if isinstance(add.inputs[1], gs.Constant) else add.inputs[::-1]
    if not isinstance(eps, gs.Constant) or eps.values.size != 1:
        return None
    mean_of_squares = _producer(variance, "ReduceMean")
    if _mean_axes(mean_of_squares, rank) != axes:
        return None
    square = mean_of_squares.inputs[0]
    power, product = _producer(square, "Pow"), _producer(square, "Mul")
    is_square = (power is not None and power.inputs[0] is centred and isinstance(power.inputs[1], gs.Constant)
                 and float(power.inputs[1].values) == 2.0) or \
                (product is not None and product.inputs[0] is centred and product.inputs[1] is centred)
    if not is_square or not all(isinstance(x.shape[a], int) for a in axes):
        return None
    return x, axes, float(eps.values.reshape(-1)[0])


def _replace(graph: gs.Graph, div: gs.Node, x: gs.Variable, axes: tuple[int, ...], eps: float) -> None:
    """LayerNormalization of x over `axes`, moved to the end by a Transpose where they are not there already."""
    rank, output = len(x.shape), div.outputs[0]
    name = div.name or output.name
    kept = [a for a in range(rank) if a not in axes]
    perm = kept + list(axes)
    scale = gs.Constant(f"rcam/normalized/{output.name}/scale",
                        np.ones([x.shape[a] for a in axes], dtype=x.dtype or np.float32))
    div.outputs.clear()
    if perm == list(range(rank)):
        graph.nodes.append(gs.Node("LayerNormalization", name, {"axis": len(kept), "epsilon": eps}, [x, scale],
                                   [output]))
        return
    moved = gs.Variable(f"rcam/normalized/{output.name}/moved", dtype=x.dtype, shape=[x.shape[a] for a in perm])
    normalized = gs.Variable(f"rcam/normalized/{output.name}/normalized", dtype=x.dtype, shape=list(moved.shape))
    graph.nodes += [gs.Node("Transpose", f"{name}/to_last", {"perm": perm}, [x], [moved]),
                    gs.Node("LayerNormalization", name, {"axis": len(kept), "epsilon": eps}, [moved, scale],
                            [normalized]),
                    gs.Node("Transpose", f"{name}/back", {"perm": np.argsort(perm).tolist()}, [normalized], [output])]
