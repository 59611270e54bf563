"""ConvTranspose (segmenters' learned upsampling: U-Net, FCN) and dilated Conv (DeepLab's ASPP).

Three levels, each in onnxruntime:
- the emitters on their own: the propagator's `forward` is the node's own op (bias-free, offset in the bias) and its
  `transpose` is the exact adjoint, <T g, x> = <g, F x>, for every attribute form (strides, pads, output_padding,
  groups, dilations, auto_pad, output_shape);
- the op inside a tiny classifier (tests/opgraph.py): z+ against reference.zplus_rule over torch's
  conv_transpose2d, and the chain rule against autograd;
- a torch net with a ConvTranspose2d, exported by both exporters, against the independent reference (z+ for the
  ConvTranspose2d, registered below) and the Grad-CAM gradient against autograd; and an ASPP net (dilations 2, 4).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import detectors
import onnx_rcam
import reference
import zoo
from conftest import assert_close, run_model
from onnx_rcam.builder import Builder
from onnx_rcam.propagators import PROPAGATORS, Context
from opgraph import (OpGraph, assert_matches, explain, f64, per_unit_batch, random_samples, relevance_at_output,
                     weights)
from onnx_rcam.rules import Rule


def conv_transpose_zplus(module, inputs, relevance):
    """z+ for nn.ConvTranspose2d: reference.zplus picks F.conv2d only for nn.Conv2d, F.linear otherwise."""
    def forward(v, weight):
        return F.conv_transpose2d(v, weight, None, module.stride, module.padding, module.output_padding,
                                  module.groups, module.dilation)
    return (reference.zplus_rule(forward, inputs[0], module.weight, relevance),)


reference.COMPOSITES["rcam"][nn.ConvTranspose2d] = conv_transpose_zplus

HEIGHT, WIDTH = 4, 3
# id: (in channels, out channels, kernel [kh, kw], ONNX attributes, explicit pads [top, left, bottom, right] as the
# ONNX spec resolves them, which the reference applies by hand)
CASES = {
    "k2_s2": (4, 6, [2, 2], dict(strides=[2, 2]), [0, 0, 0, 0]),
    "k3_s2_p1_op1": (4, 6, [3, 3], dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), [1, 1, 1, 1]),
    "groups2": (4, 6, [3, 3], dict(strides=[2, 2], pads=[1, 1, 1, 1], group=2), [1, 1, 1, 1]),
    "depthwise": (4, 4, [2, 2], dict(strides=[2, 2], group=4), [0, 0, 0, 0]),
    "dilations2": (4, 6, [3, 3], dict(pads=[2, 2, 2, 2], dilations=[2, 2]), [2, 2, 2, 2]),
    "dilations2_s2": (4, 6, [3, 3], dict(strides=[2, 2], pads=[1, 2, 1, 2], dilations=[2, 2]), [1, 2, 1, 2]),
    "dilations2_s2_op1": (4, 6, [3, 3], dict(strides=[2, 2], dilations=[2, 2], output_padding=[1, 1]),
                          [0, 0, 0, 0]),
    "asymmetric": (4, 6, [2, 3], dict(strides=[2, 1], pads=[0, 1, 1, 0]), [0, 1, 1, 0]),
    # Full size 9 x 7 cropped to 8 x 6: one row and column, at the end (SAME_UPPER), at the start otherwise.
    "same_upper": (4, 6, [3, 3], dict(strides=[2, 2], auto_pad="SAME_UPPER"), [0, 0, 1, 1]),
    "same_lower": (4, 6, [3, 3], dict(strides=[2, 2], auto_pad="SAME_LOWER"), [1, 1, 0, 0]),
    "output_shape": (4, 6, [3, 3], dict(strides=[2, 2], output_shape=[7, 6]), [1, 1, 1, 0]),
    "valid": (4, 6, [3, 3], dict(strides=[2, 2], auto_pad="VALID"), [0, 0, 0, 0]),
}


def case_weight(case: str):
    channels, out_channels, kernel, attrs, _ = CASES[case]
    return weights([channels, out_channels // attrs.get("group", 1), *kernel], seed=1)


def conv_transpose_forward(case: str):
    """The case's ConvTranspose in torch: the full transposed convolution, output_padding's zeros appended, then
    cropped by the explicit pads."""
    _, _, _, attrs, (top, left, bottom, right) = CASES[case]
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    extra_h, extra_w = attrs.get("output_padding", [0, 0])

    def forward(v, w):
        full = F.pad(F.conv_transpose2d(v, w, None, strides, 0, 0, attrs.get("group", 1), dilations),
                     (0, extra_w, 0, extra_h))
        return full[:, :, top:full.shape[2] - bottom, left:full.shape[3] - right]
    return forward


# ---------------------------------------------------------------------------------------------------------------
# The emitters: forward is the op, transpose its adjoint
# ---------------------------------------------------------------------------------------------------------------

class Probe(Rule):
    """A rule that keeps the layer view the propagator built."""

    name = "probe"

    def linear(self, b, layer, relevance):
        self.layer = layer
        return [None]

    def rule_for(self, op_type, reads_image=False, depthwise=False):  # serves as the composite too
        return self


def emitters(case: str, bias: np.ndarray | None, offset: float):
    """A model computing, from x and g, the propagator's forward(x) + offset and transpose(g), and the plain op."""
    channels, out_channels, _, attrs, _ = CASES[case]
    weight = case_weight(case)
    g = OpGraph(channels, HEIGHT, WIDTH)
    y = g.node("ConvTranspose", [g.x, g.const(weight)] + ([g.const(bias)] if bias is not None else []), out="y",
               **attrs)
    base = g.model(y)
    graph = gs.import_onnx(base)
    node = next(n for n in graph.nodes if n.op == "ConvTranspose")
    probe, b = Probe(), Builder(17, set(graph.tensors()))
    assert PROPAGATORS["ConvTranspose"](Context(b, probe), node, ["g"]) == [None]
    layer = probe.layer
    assert (layer.bias is None) == (bias is None) and layer.op == "ConvTranspose" and layer.inputs == ["x"]
    forward = b.identity(layer.forward(b, ["x"], offset=offset), out="forward")
    transpose = b.identity(layer.transpose(b, "g")[0], out="transpose")
    out_shape = list(node.outputs[0].shape)
    model = helper.make_model(helper.make_graph(
        [*base.graph.node, *b.nodes], "emitters",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, HEIGHT, WIDTH]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", *out_shape[1:]])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
         (("y", ["N", *out_shape[1:]]), (forward, ["N", *out_shape[1:]]), (transpose, ["N", channels, HEIGHT, WIDTH]))],
        [*base.graph.initializer, *b.initializers]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model, out_shape


@pytest.mark.parametrize("case", CASES)
def test_emitters_are_the_op_and_its_adjoint(case):
    channels = CASES[case][0]
    bias = weights([CASES[case][1]], seed=2)
    model, out_shape = emitters(case, bias, offset=0.25)
    x = random_samples([3, channels, HEIGHT, WIDTH], seed=3)
    grad = random_samples([3, *out_shape[1:]], seed=4)
    out = run_model(model, {"x": x, "g": grad})
    assert out["transpose"].shape == x.shape

    # forward: the op without its bias, plus the offset; also the torch reference's forward of the case.
    assert_matches(out["forward"], out["y"] - bias.reshape(-1, 1, 1) + 0.25, "forward")
    with torch.no_grad():
        expected = conv_transpose_forward(case)(f64(x), f64(case_weight(case)))
    assert_matches(out["y"] - bias.reshape(-1, 1, 1), expected, "op against torch")
    # adjoint, per sample: <T g, x> = <g, F x> (F without bias or offset)
    lhs = (out["transpose"].astype(np.float64) * x).sum(axis=(1, 2, 3))
    rhs = (grad.astype(np.float64) * (out["forward"] - 0.25)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)
    # and exactly autograd's transpose
    expected_transpose = reference.transposed(lambda v: conv_transpose_forward(case)(v, f64(case_weight(case))),
                                              [f64(x)], f64(grad))[0]
    assert_matches(out["transpose"], expected_transpose, "transpose")


def test_computed_output_shape_is_refused():
    """A ConvTranspose whose output is not its full transposed convolution cropped by pads (output_shape past it)."""
    g = OpGraph(4, HEIGHT, WIDTH)
    a = g.signed_layer()
    model = g.classifier(g.node("ConvTranspose", [a, g.const(case_weight("k2_s2"))], strides=[2, 2],
                                output_shape=[9, 7]))
    with pytest.raises(onnx_rcam.UnsupportedOpError, match="ConvTranspose node .*full transposed convolution"):
        onnx_rcam.augment(model, layers=["a"])


# ---------------------------------------------------------------------------------------------------------------
# The op inside a classifier: z+ and the chain rule, in the full pipeline
# ---------------------------------------------------------------------------------------------------------------

def classifier(case: str, bias: bool):
    channels, out_channels, _, attrs, _ = CASES[case]
    g = OpGraph(channels, HEIGHT, WIDTH)
    a = g.signed_layer()
    inputs = [a, g.const(case_weight(case))] + ([g.const(weights([out_channels], seed=2))] if bias else [])
    return g.classifier(g.node("ConvTranspose", inputs, **attrs))


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("case", CASES)
def test_conv_transpose_zplus(case, bias):
    channels, out_channels = CASES[case][:2]
    forward, weight = conv_transpose_forward(case), f64(case_weight(case))
    samples = random_samples([2, channels, HEIGHT, WIDTH], seed=3)
    with torch.no_grad():
        y_shape = forward(f64(samples[:1]), weight).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(classifier(case, bias), x, targets)

    bias_values = f64(weights([out_channels], seed=2)).reshape(-1, 1, 1) if bias else 0
    assert_matches(out.output, (forward(f64(x), weight) + bias_values).flatten(1), "forward")
    expected = reference.zplus_rule(forward, f64(x), weight, relevance_at_output(targets, y_shape))
    assert_matches(out.relevance(), expected)


@pytest.mark.parametrize("case", ["k3_s2_p1_op1", "groups2", "dilations2_s2_op1", "same_lower"])
def test_conv_transpose_gradient(case):
    channels = CASES[case][0]
    forward, weight = conv_transpose_forward(case), f64(case_weight(case))
    samples = random_samples([1, channels, HEIGHT, WIDTH], seed=5)
    with torch.no_grad():
        y_shape = forward(f64(samples), weight).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(classifier(case, bias=True), x, targets, composite={"*": "gradient"})
    expected = reference.transposed(lambda v: forward(v, weight), [f64(x)], relevance_at_output(targets, y_shape))
    assert_matches(out.relevance(), expected[0])


# ---------------------------------------------------------------------------------------------------------------
# Exported torch nets against the reference and autograd
# ---------------------------------------------------------------------------------------------------------------

class UpsamplingNet(nn.Module):
    """Conv -> ReLU -> ConvTranspose (stride 2) -> ReLU -> Conv -> ReLU -> global mean -> Linear."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act1 = nn.ReLU()
        self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Conv2d(6, 8, 3, padding=1)
        self.act3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.act2(self.up(self.act1(self.stem(x))))
        return self.fc(self.flatten(self.pool(self.act3(self.head(x)))))


class ASPPNet(nn.Module):
    """DeepLabV3's ASPP on a small stem: 1x1 and 3x3 convs at dilations 2 and 4 (padding = dilation), concatenated,
    projected by a 1x1 conv; then a classifier head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.branch1 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=2, dilation=2), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=4, dilation=4), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(12, 8, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.project(torch.cat([self.branch1(x), self.branch2(x), self.branch3(x)], 1))
        return self.fc(self.flatten(self.pool(x)))


SIZE, BATCH = 16, 3
NETS = {"upsampling": (UpsamplingNet, ["act1", "up", "act2"]), "aspp": (ASPPNet, ["act", "branch2", "project"])}


@functools.cache
def net_and_batch(name: str):
    build, layers = NETS[name]
    model = detectors.randomize(build(), seed=sum(map(ord, name)))
    x, targets, classes = reference.well_conditioned_batch(model, layers, BATCH, SIZE, seed=7)
    return model, layers, x, targets, classes


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", NETS)
def test_net_matches_reference(name, exporter, export_dir):
    model, layers, x, targets, classes = net_and_batch(name)
    path = zoo.export(model, export_dir / f"convtranspose-{name}-{exporter}.onnx", exporter,
                      input_shape=(1, 3, SIZE, SIZE))
    if name == "upsampling":
        assert any(n.op_type == "ConvTranspose" for n in onnx.load(path).graph.node)
    else:
        assert sorted({tuple(a.ints) for n in onnx.load(path).graph.node for a in n.attribute
                       if a.name == "dilations"}) == [(1, 1), (2, 2), (4, 4)]
    augmented = onnx_rcam.augment(path, layers=layers, methods=["rcam", "gradcam"])
    out = run_model(augmented, {"input": x, "rcam/target": targets})
    assert np.array_equal(out["logits"], run_model(str(path), {"input": x})["logits"]), "original logits changed"
    np.testing.assert_array_equal(out["rcam/class"], classes)

    ref = reference.reference(model, x, layers, targets=classes)
    activations, grads = reference.gradients(model, x, layers, classes)
    for layer in layers:
        assert_close(out[f"rcam/{layer}/activation"], ref.activations[layer], f"{layer} activation")
        assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance")
        assert_close(out[f"rcam/{layer}/raw"], ref.raw[layer], f"{layer} raw")
        assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map")
        assert_close(out[f"gradcam/{layer}/gradient"], grads[layer].numpy(), f"{layer} gradient")
        raw, cam = reference.gradient_cams(activations[layer], grads[layer], (SIZE, SIZE))["gradcam"]
        assert_close(out[f"gradcam/{layer}/raw"], raw.numpy(), f"{layer} gradcam raw")
        assert_close(out[f"gradcam/{layer}/map"], cam.numpy(), f"{layer} gradcam map")
