"""The sweep's bookkeeping: which tensors are provably non-negative, and what the generated graph leaves out."""

from __future__ import annotations

import onnx_rcam
import zoo
from onnx_rcam.canonicalize import canonicalize
from onnx_rcam.load import infer_shapes, load
from onnx_rcam.propagators import nonnegative_tensors


def test_sign_rules_follow_relu_through_pools_and_joins(export_dir):
    model = zoo.randomize(zoo.resnet18(0.125, num_classes=10), seed=3)
    path = zoo.export(model, export_dir / "sweep-resnet18.onnx", "torchscript", input_shape=(1, 3, 64, 64))
    canonical = canonicalize(infer_shapes(load(path)))
    known = nonnegative_tensors(canonical.graph)
    by_op = {}
    for node in canonical.graph.nodes:
        by_op.setdefault(node.op, []).append(node.outputs[0].name in known)
    assert all(by_op["Relu"]) and all(by_op["MaxPool"]) and all(by_op["GlobalAveragePool"])
    assert not any(by_op["Conv"]) and not any(by_op["Add"])  # a BN-folded conv's output is signed
    assert canonical.image.name not in known


def test_negative_half_only_for_signed_inputs(export_dir):
    """z+ emits W- x- only where x can be negative: never in VGG above the stem, but for EfficientNet's expand convs,
    which read residual sums."""
    model = zoo.randomize(zoo.vgg16(0.125, num_classes=10), seed=4)
    path = zoo.export(model, export_dir / "sweep-vgg16.onnx", "torchscript")
    augmented = onnx_rcam.augment(path, layers=["features.4"])
    generated = [n for n in augmented.graph.node if n.name.startswith("rcam/")]
    assert not [n for n in generated if n.op_type == "Min"]
    convs_above = len([n for n in augmented.graph.node if n.op_type == "Conv" and not n.name.startswith("rcam/")]) - 2
    # per Conv above features.4, W+ x+ and its transpose (a Conv or a ConvTranspose), and the adjoint of the (1x1)
    # adaptive average pool: no W- halves
    windows = [n for n in generated if n.op_type in ("Conv", "ConvTranspose")]
    assert len(windows) == 2 * convs_above + 1

    bundled = onnx_rcam.augment(onnx_rcam.default_model_path(), layers=["_blocks.14"])
    assert [n for n in bundled.graph.node if n.name.startswith("rcam/") and n.op_type == "Min"]
