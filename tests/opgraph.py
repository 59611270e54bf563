"""A harness for testing one op propagator or one rule at a time, in onnxruntime.

A test builds a tiny ONNX classifier around the op under test: input `x` [N, C, H, W] -> `a` (a LeakyRelu with
slope 1, an identity that is a node, so that `a` is a selectable layer holding signed values; or a Relu) -> the
op(s) under test -> `logits` [N, K]. `explain` augments it, runs it and returns the relevance at the chosen layers.

The batch dimension is symbolic, so one model serves any batch: `per_unit_batch` repeats each sample once per
logit and explains logit k for the k-th copy. With onehot initial relevance, every output unit's relevance is then
checked on its own; since every rule here is linear in the relevance it receives, that pins the whole propagation
down, border windows and padding included.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnx_rcam
from conftest import run_model


class OpGraph:
    """Collects nodes and constants; one method per thing a test adds, each returning the new tensor's name."""

    def __init__(self, channels: int, height: int, width: int, opset: int = 17):
        self.input_shape = ["N", channels, height, width]
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.x = "x"

    def const(self, value, dtype=np.float32) -> str:
        name = f"const_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"node_{len(self.nodes)}_{op}", **attrs))
        return out

    def signed_layer(self, name: str = "a") -> str:
        """`name` = x, produced by a node: LeakyRelu with slope 1."""
        return self.node("LeakyRelu", [self.x], out=name, alpha=1.0)

    def relu_layer(self, name: str = "a") -> str:
        return self.node("Relu", [self.x], out=name)

    def model(self, output: str) -> onnx.ModelProto:
        """The model with `output` as its only output, its shape found by ONNX shape inference."""
        image = helper.make_tensor_value_info(self.x, TensorProto.FLOAT, self.input_shape)
        graph = helper.make_graph(self.nodes, "op_under_test", [image], [], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        model.graph.output.extend(v for v in inferred.graph.value_info if v.name == output)
        onnx.checker.check_model(model, full_check=True)
        return model

    def classifier(self, y: str) -> onnx.ModelProto:
        """y flattened into the logits: the model's only output."""
        return self.model(self.node("Flatten", [y], out="logits", axis=1))


@dataclass
class Explained:
    outputs: dict[str, np.ndarray]  # every output of the augmented model by name
    output: np.ndarray             # the first original output
    classes: np.ndarray            # rcam/class

    def relevance(self, layer: str = "a") -> np.ndarray:
        return self.outputs[f"rcam/{layer}/relevance"]

    def raw(self, layer: str = "a") -> np.ndarray:
        return self.outputs[f"rcam/{layer}/raw"]

    def map(self, layer: str = "a") -> np.ndarray:
        return self.outputs[f"rcam/{layer}/map"]


def augment(model: onnx.ModelProto, layers=("a",), composite: str | dict = "rcam", initial: str = "onehot"):
    """onnx_rcam.augment, with a composite table (a dict) written to a JSON file, the way a user passes one."""
    if isinstance(composite, str):
        return onnx_rcam.augment(model, layers=list(layers), composite=composite, initial=initial)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "composite.json"
        path.write_text(json.dumps(composite))
        return onnx_rcam.augment(model, layers=list(layers), composite=str(path), initial=initial)


def explain(model: onnx.ModelProto, x: np.ndarray, targets: np.ndarray, layers=("a",),
            composite: str | dict = "rcam", initial: str = "onehot") -> Explained:
    augmented = augment(model, layers, composite, initial)
    outputs = run_model(augmented, {"x": x.astype(np.float32), "rcam/target": targets.astype(np.int64)})
    return Explained(outputs, outputs[model.graph.output[0].name], outputs["rcam/class"])


def random_samples(shape, seed: int, scale: float = 1.0, positive: bool = False) -> np.ndarray:
    """Random float32 samples; `positive` draws from (0.1, 1.1) * scale instead of N(0, scale^2)."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.1, 1.1, shape) if positive else rng.standard_normal(shape)
    return (values * scale).astype(np.float32)


def distinct_samples(shape, seed: int) -> np.ndarray:
    """Signed samples whose values are all distinct and at least 1e-2 apart: max pools have no (near-)ties."""
    count = int(np.prod(shape))
    # Offset by half a step: no value is 0, so none ties with the zeros of a Pad either.
    values = (np.random.default_rng(seed).permutation(count) - count / 2 + 0.5) * 1e-2
    return values.reshape(shape).astype(np.float32)


def weights(shape, seed: int, scale: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def per_unit_batch(x: np.ndarray, classes: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each sample repeated once per class, the k-th copy explaining class k; `keep` [N, K] selects pairs."""
    repeated, targets = np.repeat(x, classes, axis=0), np.tile(np.arange(classes, dtype=np.int64), len(x))
    if keep is None:
        return repeated, targets
    keep = np.asarray(keep).reshape(-1)
    return repeated[keep], targets[keep]


def onehot(targets: np.ndarray, classes: int) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(targets), classes).double()


def relevance_at_output(explained_targets: np.ndarray, shape) -> torch.Tensor:
    """Onehot relevance at the flattened logits, reshaped back to the op's output shape [N, ...]."""
    classes = int(np.prod(shape))
    return onehot(explained_targets, classes).reshape(-1, *shape)


def conv_forward(pads, strides=(1, 1), dilations=(1, 1), groups=1):
    """F.conv2d without bias, with ONNX pads [top, left, bottom, right] applied explicitly by F.pad.

    A dilated kernel is written out as the equivalent dense kernel with zeros between its taps: torch's float64
    dilated convolution is some 100 times slower, and the zeros stay zero in W+ and W-.
    """
    top, left, bottom, right = pads

    def forward(v, w):
        if tuple(dilations) != (1, 1):
            dense = w.new_zeros([*w.shape[:2], *((k - 1) * d + 1 for k, d in zip(w.shape[2:], dilations))])
            dense[:, :, ::dilations[0], ::dilations[1]] = w
            w = dense
        return F.conv2d(F.pad(v, (left, right, top, bottom)), w, None, strides, 0, 1, groups)
    return forward


def f64(array) -> torch.Tensor:
    """An exact float64 copy of a float32 array, so the reference uses the very values the model holds."""
    return torch.as_tensor(np.asarray(array, dtype=np.float32)).double()


def assert_matches(ours: np.ndarray, ref, what: str = "relevance") -> None:
    """docs/design.md section 4, per sample: max|ours - ref| <= 1e-4 * max|ref| + 1e-7."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    axes = tuple(range(1, ref.ndim))
    deviation = np.abs(ours.astype(np.float64) - ref).max(axis=axes)
    bound = 1e-4 * np.abs(ref).max(axis=axes) + 1e-7
    worst = int(np.argmax(deviation - bound))
    assert np.all(deviation <= bound), (f"{what}: sample {worst} deviates by {deviation[worst]:.3g}, "
                                        f"allowed {bound[worst]:.3g}")
    assert np.abs(ref).max() > 0, f"{what}: the reference is all zero, so the comparison checks nothing"
