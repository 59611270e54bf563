"""Each op propagator on its own, in onnxruntime, against an independent float64 torch computation.

Every test builds a tiny classifier around the op (tests/opgraph.py): `a` -> op -> logits, explains every logit of
every sample under onehot initial relevance, and compares the relevance at `a` with the op's rule computed in torch:
z+ with the transposed operator from autograd (reference.zplus_rule), proportional redistribution
(reference.proportional_rule), or plain autograd gradients. Where the reference re-implements the forward pass (the
Conv's padding, a pool's windows), the test first checks that it agrees with onnxruntime's forward.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

import onnx_rcam
from onnx_rcam.propagators import nonnegative_tensors
from opgraph import (OpGraph, assert_matches, augment, conv_forward, distinct_samples, explain, f64, onehot,
                     per_unit_batch, random_samples, relevance_at_output, weights)
from reference import proportional_rule, zplus_rule

GRADIENT = {"*": "gradient"}


def same_pads(sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    """ONNX auto_pad SAME_UPPER / SAME_LOWER: output = ceil(size / stride), the odd pad at the end / the start."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        begins.append(total // 2 if upper else total - total // 2)
        ends.append(total - total // 2 if upper else total // 2)
    return begins + ends


# ---------------------------------------------------------------------------------------------------------------
# Conv: z+ over both input signs, biases ignored
# ---------------------------------------------------------------------------------------------------------------

HEIGHT, WIDTH = 7, 6
# id: (in channels, out channels, kernel [kh, kw], ONNX attributes)
CONV_CASES = {
    "groups1": (4, 6, [3, 3], dict(pads=[1, 1, 1, 1])),
    "groups2": (4, 6, [3, 3], dict(pads=[1, 1, 1, 1], group=2)),
    "depthwise": (4, 8, [3, 3], dict(pads=[1, 1, 1, 1], group=4)),
    "depthwise_strides2": (4, 4, [3, 3], dict(pads=[1, 1, 1, 1], group=4, strides=[2, 2])),
    "strides2": (4, 6, [3, 3], dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    "dilations2": (4, 6, [3, 3], dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    "asymmetric_pads": (4, 6, [3, 3], dict(pads=[0, 2, 1, 0])),
    "kernel2x3_strides2x1": (4, 6, [2, 3], dict(pads=[1, 0, 0, 1], strides=[2, 1])),
    # 7 x 6 at stride 2: SAME pads 1 + 1 rows, and one column, at the end (UPPER) or the start (LOWER).
    "same_upper": (4, 6, [3, 3], dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": (4, 6, [3, 3], dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    # The last input column is in no window: the transpose must pad it back (ConvTranspose output_padding).
    "valid": (4, 6, [3, 3], dict(auto_pad="VALID", strides=[2, 2])),
}


def explicit_pads(attrs: dict, kernel) -> list[int]:
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad.startswith("SAME"):
        return same_pads([HEIGHT, WIDTH], kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
    return [0, 0, 0, 0] if auto_pad == "VALID" else attrs["pads"]


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_zplus(case, bias):
    channels, out_channels, kernel, attrs = CONV_CASES[case]
    groups = attrs.get("group", 1)
    weight = weights([out_channels, channels // groups, *kernel], seed=1)
    bias_values = weights([out_channels], seed=2)
    g = OpGraph(channels, HEIGHT, WIDTH)
    a = g.signed_layer()
    y = g.node("Conv", [a, g.const(weight)] + ([g.const(bias_values)] if bias else []), **attrs)
    model = g.classifier(y)

    forward = conv_forward(explicit_pads(attrs, kernel), attrs.get("strides", [1, 1]),
                           attrs.get("dilations", [1, 1]), groups)
    samples = random_samples([2, channels, HEIGHT, WIDTH], seed=3)
    with torch.no_grad():
        y_shape = forward(f64(samples[:1]), f64(weight)).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(model, x, targets)

    a_ref = f64(x)
    z_ref = forward(a_ref, f64(weight)) + (f64(bias_values).reshape(-1, 1, 1) if bias else 0)
    assert_matches(out.output, z_ref.flatten(1), "forward")
    np.testing.assert_array_equal(out.classes, targets)
    assert (x < 0).any() and (weight < 0).any(), "z+ must see both signs of x and W"
    expected = zplus_rule(forward, a_ref, f64(weight), relevance_at_output(targets, y_shape))
    assert_matches(out.relevance(), expected)


@pytest.mark.parametrize("fill", [0.0, 0.5], ids=["zero_pad_folded_into_conv", "nonzero_pad_sliced"])
def test_pad_then_conv(fill):
    """A zero Pad becomes the Conv's own padding (canonicalize); any other fill value goes through the Pad
    propagator, which slices the padded relevance back to the Pad's input."""
    weight = weights([3, 4, 3, 3], seed=4)
    pads = [0, 0, 1, 2, 0, 0, 2, 0]  # ONNX Pad order: begins of N, C, H, W, then ends
    g = OpGraph(4, 5, 5)
    a = g.signed_layer()
    padded = g.node("Pad", [a, g.const(pads, np.int64), g.const(fill)], mode="constant")
    model = g.classifier(g.node("Conv", [padded, g.const(weight)], pads=[1, 0, 1, 0]))

    samples = random_samples([2, 4, 5, 5], seed=5)
    forward = conv_forward([1, 0, 1, 0])

    def pad(v):
        return F.pad(v, (2, 0, 1, 2), value=fill)

    y_shape = forward(pad(f64(samples[:1])), f64(weight)).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(model, x, targets)

    assert_matches(out.output, forward(pad(f64(x)), f64(weight)).flatten(1), "forward")
    # z+ at the Conv's input, the padded tensor, then the rows and columns the Pad added dropped.
    relevance_padded = zplus_rule(forward, pad(f64(x)), f64(weight), relevance_at_output(targets, y_shape))
    assert_matches(out.relevance(), relevance_padded[:, :, 1:-2, 2:])


def assert_routes_like_the_gradient(model, pool, samples):
    """Forward equals `pool`, and the relevance at `a` is the gradient of `pool` applied to each unit's relevance."""
    y_shape = pool(f64(samples[:1])).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(model, x, targets)

    assert_matches(out.output, pool(f64(x)).flatten(1), "forward")
    expected = torch.autograd.functional.vjp(pool, f64(x), relevance_at_output(targets, y_shape))[1]
    assert_matches(out.relevance(), expected)


def test_pad_then_max_pool():
    """Pad before a MaxPool is not folded: the Pad propagator slices what the pool routed into the padding off.

    The inputs are positive: onnxruntime 1.31 fuses Pad(0) into MaxPool and then pads with -inf instead of 0, so on
    signed inputs its forward pass is wrong (by 0.675 here); the augmented model reproduces the plain model's
    forward bit for bit, bug included (fusion.py keeps that fusion intact).
    """
    pads = [0, 0, 1, 0, 0, 0, 0, 1]
    g = OpGraph(3, 5, 5)
    a = g.signed_layer()
    padded = g.node("Pad", [a, g.const(pads, np.int64)], mode="constant")
    model = g.classifier(g.node("MaxPool", [padded], kernel_shape=[2, 2], strides=[2, 2]))

    def pool(v):
        return F.max_pool2d(F.pad(v, (0, 1, 1, 0)), 2, 2)

    samples = distinct_samples([2, 3, 5, 5], seed=6)
    samples = samples - samples.min() + 0.1  # distinct and positive
    assert_routes_like_the_gradient(model, pool, samples)


# ---------------------------------------------------------------------------------------------------------------
# Gemm and MatMul with a constant operand: z+ under rcam, epsilon (bias included) under epsilon_plus
# ---------------------------------------------------------------------------------------------------------------

CLASSES = 5
# id: (transB, alpha, beta, with bias C)
GEMM_CASES = {
    "transB1": (1, 1.0, 1.0, False),
    "transB0_alpha_beta": (0, 0.5, 2.0, True),
    "transB1_negative_alpha": (1, -1.5, 0.5, True),
}


def linear_reference(composite: str, x, weight, bias=None):
    """The relevance at x of y = x W^T + bias for onehot relevance at y: z+ (rcam) or epsilon (epsilon_plus)."""
    def apply(relevance):
        if composite == "rcam":
            return zplus_rule(lambda v, w: F.linear(v, w), x, weight, relevance)
        return proportional_rule(lambda v: F.linear(v, weight, bias), [x], relevance, eps=1e-6)[0]
    return apply


@pytest.mark.parametrize("composite", ["rcam", "epsilon_plus"])
@pytest.mark.parametrize("case", GEMM_CASES)
def test_gemm(case, composite):
    trans_b, alpha, beta, has_bias = GEMM_CASES[case]
    features = 2 * 3 * 3
    matrix = weights([CLASSES, features] if trans_b else [features, CLASSES], seed=7)
    c = weights([CLASSES], seed=8)
    g = OpGraph(2, 3, 3)
    flat = g.node("Flatten", [g.signed_layer()], axis=1)
    inputs = [flat, g.const(matrix)] + ([g.const(c)] if has_bias else [])
    model = g.model(g.node("Gemm", inputs, out="logits", transB=trans_b, alpha=alpha, beta=beta))

    x, targets = per_unit_batch(random_samples([3, 2, 3, 3], seed=9), CLASSES)
    out = explain(model, x, targets, composite=composite)

    weight = alpha * (f64(matrix) if trans_b else f64(matrix).T)
    bias = beta * f64(c) if has_bias else None
    flat_ref = f64(x).flatten(1)
    assert_matches(out.output, F.linear(flat_ref, weight, bias), "forward")
    expected = linear_reference(composite, flat_ref, weight, bias)(onehot(targets, CLASSES))
    assert_matches(out.relevance(), expected.reshape(x.shape))


@pytest.mark.parametrize("composite", ["rcam", "epsilon_plus"])
def test_transpose_then_gemm_trans_a(composite):
    """Flatten -> Transpose -> Gemm(transA=1): the transposed batch layout, and the Transpose propagator."""
    features = 2 * 3 * 3
    matrix = weights([features, CLASSES], seed=10)
    c = weights([CLASSES], seed=11)
    g = OpGraph(2, 3, 3)
    flat = g.node("Flatten", [g.signed_layer()], axis=1)
    columns = g.node("Transpose", [flat], perm=[1, 0])
    model = g.model(g.node("Gemm", [columns, g.const(matrix), g.const(c)], out="logits", transA=1))

    x, targets = per_unit_batch(random_samples([3, 2, 3, 3], seed=12), CLASSES)
    out = explain(model, x, targets, composite=composite)

    flat_ref = f64(x).flatten(1)
    assert_matches(out.output, F.linear(flat_ref, f64(matrix).T, f64(c)), "forward")
    expected = linear_reference(composite, flat_ref, f64(matrix).T, f64(c))(onehot(targets, CLASSES))
    assert_matches(out.relevance(), expected.reshape(x.shape))


@pytest.mark.parametrize("composite", ["rcam", "epsilon_plus"])
@pytest.mark.parametrize("bias_add", [False, True], ids=["matmul", "matmul_then_bias_add"])
def test_matmul_constant_right(composite, bias_add):
    """MatMul(activation, constant). A bias in a separate Add is folded into the layer (canonicalize makes the
    pair a Gemm), so under epsilon it is part of z, as nn.Linear's bias is."""
    features = 2 * 3 * 3
    matrix = weights([features, CLASSES], seed=13)
    c = weights([CLASSES], seed=14, scale=0.1)
    g = OpGraph(2, 3, 3)
    flat = g.node("Flatten", [g.signed_layer()], axis=1)
    if bias_add:
        logits = g.node("Add", [g.node("MatMul", [flat, g.const(matrix)]), g.const(c)], out="logits")
    else:
        logits = g.node("MatMul", [flat, g.const(matrix)], out="logits")
    model = g.model(logits)

    x, targets = per_unit_batch(random_samples([3, 2, 3, 3], seed=15), CLASSES)
    out = explain(model, x, targets, composite=composite)

    flat_ref = f64(x).flatten(1)
    assert_matches(out.output, flat_ref @ f64(matrix) + (f64(c) if bias_add else 0), "forward")
    expected = linear_reference(composite, flat_ref, f64(matrix).T, f64(c) if bias_add else None)
    assert_matches(out.relevance(), expected(onehot(targets, CLASSES)).reshape(x.shape))


# ---------------------------------------------------------------------------------------------------------------
# Activations: pass under rcam, their derivative under the gradient rule
# ---------------------------------------------------------------------------------------------------------------

BN_GAMMA, BN_BETA = weights([4], seed=16, scale=1.0), weights([4], seed=17)
BN_MEAN, BN_VAR = weights([4], seed=18), np.random.default_rng(19).uniform(0.2, 2.0, 4).astype(np.float32)
PRELU_SLOPE = weights([4, 1, 1], seed=60)
# Per-channel factors of both signs, none near 0 (Div divides by them).
FACTOR = (np.random.default_rng(61).uniform(0.5, 2.0, [4, 1, 1]) * [[[1]], [[-1]], [[1]], [[-1]]]).astype(np.float32)

# id: (ONNX node builder on (graph, input), the same function in torch)
def _spelled_out_normalization(g, v, axes, square):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + 1e-3) over `axes`, as exporters write ConvNeXt's channels-first
    LayerNorm (square: Pow(d, 2) or d * d)."""
    mean = g.node("ReduceMean", [v, g.const(axes, np.int64)])  # opset 18 on: the axes are an input
    centred = g.node("Sub", [v, mean])
    squared = g.node("Pow", [centred, g.const(2.0)]) if square == "Pow" else g.node("Mul", [centred, centred])
    spread = g.node("Sqrt", [g.node("Add", [g.node("ReduceMean", [squared, g.const(axes, np.int64)]),
                                            g.const(1e-3)])])
    return g.node("Div", [centred, spread])


LN_SCALE, LN_BIAS = weights([4, 5, 5], seed=95) + 1.0, weights([4, 5, 5], seed=96)
ACTIVATION_OPSET = 20  # Gelu is an op from opset 20 on, Mish from 18
ACTIVATIONS = {
    "Relu": (lambda g, v: g.node("Relu", [v]), F.relu),
    "LeakyRelu": (lambda g, v: g.node("LeakyRelu", [v], alpha=0.2), lambda v: F.leaky_relu(v, 0.2)),
    "Clip_relu6": (lambda g, v: g.node("Clip", [v, g.const(0.0), g.const(6.0)]), lambda v: v.clamp(0.0, 6.0)),
    # Follows the LeakyRelu, not a Conv: canonicalize cannot fold it.
    "BatchNormalization": (
        lambda g, v: g.node("BatchNormalization", [v] + [g.const(p) for p in (BN_GAMMA, BN_BETA, BN_MEAN, BN_VAR)],
                            epsilon=1e-3),
        lambda v: F.batch_norm(v, f64(BN_MEAN), f64(BN_VAR), f64(BN_GAMMA), f64(BN_BETA), eps=1e-3)),
    "Sigmoid": (lambda g, v: g.node("Sigmoid", [v]), torch.sigmoid),
    "Tanh": (lambda g, v: g.node("Tanh", [v]), torch.tanh),
    # torch's Hardsigmoid: alpha 1/6 (ONNX's default is 0.2).
    "HardSigmoid": (lambda g, v: g.node("HardSigmoid", [v], alpha=1 / 6, beta=0.5), F.hardsigmoid),
    "HardSwish": (lambda g, v: g.node("HardSwish", [v]), F.hardswish),
    "Elu": (lambda g, v: g.node("Elu", [v], alpha=0.7), lambda v: F.elu(v, 0.7)),
    "PRelu": (lambda g, v: g.node("PRelu", [v, g.const(PRELU_SLOPE)]),
              lambda v: torch.where(v >= 0, v, f64(PRELU_SLOPE) * v)),
    "Pow": (lambda g, v: g.node("Pow", [v, g.const(3.0)]), lambda v: v ** 3),
    "Cast": (lambda g, v: g.node("Cast", [v], to=TensorProto.FLOAT), lambda v: v),
    # alpha 0.5 (not 1e-4): the denominator's own derivative then matters.
    "LRN": (lambda g, v: g.node("LRN", [v], size=3, alpha=0.5, beta=0.75, bias=2.0),
            lambda v: F.local_response_norm(v, 3, alpha=0.5, beta=0.75, k=2.0)),
    "Softplus": (lambda g, v: g.node("Softplus", [v]), F.softplus),
    "Selu": (lambda g, v: g.node("Selu", [v]), F.selu),
    "Celu": (lambda g, v: g.node("Celu", [v], alpha=0.6), lambda v: F.celu(v, 0.6)),
    "Mish": (lambda g, v: g.node("Mish", [v]), F.mish),
    "Gelu": (lambda g, v: g.node("Gelu", [v]), F.gelu),
    "Gelu_tanh": (lambda g, v: g.node("Gelu", [v], approximate="tanh"), lambda v: F.gelu(v, approximate="tanh")),
    "Erf": (lambda g, v: g.node("Erf", [v]), torch.erf),
    # LayerNormalization over the last axis (a transformer's, on tokens) and over C, H, W; InstanceNormalization.
    "LayerNormalization_last_axis": (
        lambda g, v: g.node("LayerNormalization", [v, g.const(LN_SCALE[0, 0]), g.const(LN_BIAS[0, 0])], axis=-1,
                            epsilon=1e-3),
        lambda v: F.layer_norm(v, [5], f64(LN_SCALE[0, 0]), f64(LN_BIAS[0, 0]), eps=1e-3)),
    "LayerNormalization_chw": (
        lambda g, v: g.node("LayerNormalization", [v, g.const(LN_SCALE), g.const(LN_BIAS)], axis=1),
        lambda v: F.layer_norm(v, [4, 5, 5], f64(LN_SCALE), f64(LN_BIAS))),
    "LayerNormalization_spelled_out_channels": (
        lambda g, v: _spelled_out_normalization(g, v, [1], square="Pow"),
        lambda v: (v - v.mean(1, keepdim=True)) / torch.sqrt(v.var(1, keepdim=True, unbiased=False) + 1e-3)),
    "LayerNormalization_spelled_out_last_axis": (
        lambda g, v: _spelled_out_normalization(g, v, [-1], square="Mul"),
        lambda v: F.layer_norm(v, [5], eps=1e-3)),
    "InstanceNormalization": (
        lambda g, v: g.node("InstanceNormalization", [v, g.const(BN_GAMMA), g.const(BN_BETA)], epsilon=1e-3),
        lambda v: F.instance_norm(v, weight=f64(BN_GAMMA), bias=f64(BN_BETA), eps=1e-3)),
    "Mul_by_constant": (lambda g, v: g.node("Mul", [g.const(FACTOR), v]), lambda v: f64(FACTOR) * v),
    "Div_by_constant": (lambda g, v: g.node("Div", [v, g.const(FACTOR)]), lambda v: v / f64(FACTOR)),
    "Mul_square": (lambda g, v: g.node("Mul", [v, v]), lambda v: v * v),
    "Div_constant_by_activation": (
        lambda g, v: g.node("Div", [g.const(2.0), g.node("Add", [g.node("Mul", [v, v]), g.const(1.0)])]),
        lambda v: 2.0 / (v * v + 1.0)),
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_passes_relevance_under_rcam(activation):
    """a -> activation -> Conv: the relevance at a is the Conv's z+ relevance at the activation's output (a constant
    factor too: the rcam composite passes it)."""
    emit, function = ACTIVATIONS[activation]
    weight = weights([3, 4, 3, 3], seed=20)
    g = OpGraph(4, 5, 5, opset=ACTIVATION_OPSET)
    model = g.classifier(g.node("Conv", [emit(g, g.signed_layer()), g.const(weight)], pads=[1, 1, 1, 1]))

    samples = random_samples([2, 4, 5, 5], seed=21, scale=4.0)  # scale 4: some values above Clip's 6
    x, targets = per_unit_batch(samples, 3 * 5 * 5)
    out = explain(model, x, targets)

    activated = function(f64(x))
    forward = conv_forward([1, 1, 1, 1])
    assert_matches(out.output, forward(activated, f64(weight)).flatten(1), "forward")
    expected = zplus_rule(forward, activated, f64(weight), relevance_at_output(targets, [3, 5, 5]))
    assert_matches(out.relevance(), expected)


def test_batchnorm_after_conv_is_folded():
    """Conv -> BatchNormalization is one linear layer: z+ with the folded weight W * gamma / sqrt(var + eps), whose
    signs flip where gamma < 0."""
    weight, bias = weights([4, 4, 3, 3], seed=56), weights([4], seed=57)
    g = OpGraph(4, 4, 4)
    conv = g.node("Conv", [g.signed_layer(), g.const(weight), g.const(bias)], pads=[1, 1, 1, 1])
    normalized = g.node("BatchNormalization", [conv] + [g.const(p) for p in (BN_GAMMA, BN_BETA, BN_MEAN, BN_VAR)],
                        epsilon=1e-3)
    model = g.classifier(normalized)
    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=58), 4 * 4 * 4)
    out = explain(model, x, targets)

    assert (BN_GAMMA < 0).any()
    forward = conv_forward([1, 1, 1, 1])
    scale = f64(BN_GAMMA) / torch.sqrt(f64(BN_VAR) + 1e-3)
    folded = f64(weight) * scale.reshape(-1, 1, 1, 1)
    conv_ref = forward(f64(x), f64(weight)) + f64(bias).reshape(-1, 1, 1)
    bn_ref = F.batch_norm(conv_ref, f64(BN_MEAN), f64(BN_VAR), f64(BN_GAMMA), f64(BN_BETA), eps=1e-3)
    assert_matches(out.output, bn_ref.flatten(1), "forward")
    expected = zplus_rule(forward, f64(x), folded, relevance_at_output(targets, [4, 4, 4]))
    assert_matches(out.relevance(), expected)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_gradient(activation):
    """Under {"*": "gradient"} the sweep is the chain rule: the activation's derivative (ReLU mask, LeakyRelu slope,
    Clip mask, BN scale, the smooth activations' derivatives, LRN's through its denominator, a constant factor) and
    the transposes of Conv (strided) and Gemm, against torch autograd. The Relu after the Conv also makes the
    generated nodes read a tensor onnxruntime fuses away (fusion.py copies the Conv)."""
    emit, function = ACTIVATIONS[activation]
    weight, conv_bias = weights([3, 4, 3, 3], seed=22), weights([3], seed=23)
    matrix, c = weights([CLASSES, 3 * 3 * 3], seed=24), weights([CLASSES], seed=25)
    g = OpGraph(4, 5, 5, opset=ACTIVATION_OPSET)
    conv = g.node("Conv", [emit(g, g.signed_layer()), g.const(weight), g.const(conv_bias)], pads=[1, 1, 1, 1],
                  strides=[2, 2])
    flat = g.node("Flatten", [g.node("Relu", [conv])], axis=1)
    model = g.model(g.node("Gemm", [flat, g.const(matrix), g.const(c)], out="logits", transB=1))

    x, targets = per_unit_batch(random_samples([3, 4, 5, 5], seed=26, scale=4.0), CLASSES)
    out = explain(model, x, targets, composite=GRADIENT)

    def network(v):
        hidden = F.relu(F.conv2d(function(v), f64(weight), f64(conv_bias), 2, 1))
        return F.linear(hidden.flatten(1), f64(matrix), f64(c))

    logits, gradient = torch.autograd.functional.vjp(network, f64(x), onehot(targets, CLASSES))
    assert_matches(out.output, logits, "forward")
    assert_matches(out.relevance(), gradient)


# ---------------------------------------------------------------------------------------------------------------
# Pooling: MaxPool routes to the winners; average pools and spatial means redistribute proportionally
# ---------------------------------------------------------------------------------------------------------------

# id: (input size, kernel, stride, pad, dilation, ceil_mode)
MAX_POOL_CASES = {
    "k3_s2_p1_overlapping": (7, 3, 2, 1, 1, 0),
    "k3_s2_ceil": (6, 3, 2, 0, 1, 1),
    "k3_s2_p1_ceil": (6, 3, 2, 1, 1, 1),
    "k2_s2": (6, 2, 2, 0, 1, 0),
    "k2_s1_dilation2": (6, 2, 1, 0, 2, 0),
}
# Windows that start in the right padding, asymmetric pads and AveragePool's dilations: CEIL_MODE_CASES below.


@pytest.mark.parametrize("case", MAX_POOL_CASES)
def test_max_pool(case):
    """rcam gives MaxPool the gradient: relevance goes to the arg-max of each window, and adds up where windows
    overlap. Samples are tie-free, so the arg-max is unique."""
    size, kernel, stride, pad, dilation, ceil_mode = MAX_POOL_CASES[case]
    g = OpGraph(3, size, size)
    model = g.classifier(g.node("MaxPool", [g.signed_layer()], kernel_shape=[kernel] * 2, strides=[stride] * 2,
                                pads=[pad] * 4, dilations=[dilation] * 2, ceil_mode=ceil_mode))

    def pool(v):
        return F.max_pool2d(v, kernel, stride, pad, dilation, ceil_mode=bool(ceil_mode))

    samples = distinct_samples([2, 3, size, size], seed=27)
    assert_routes_like_the_gradient(model, pool, samples)


def test_global_max_pool():
    """GlobalMaxPool is a MaxPool over the whole grid: each channel's relevance goes to its maximum."""
    g = OpGraph(3, 5, 6)
    model = g.classifier(g.node("GlobalMaxPool", [g.signed_layer()]))
    assert_routes_like_the_gradient(model, lambda v: F.adaptive_max_pool2d(v, 1),
                                    distinct_samples([2, 3, 5, 6], seed=97))


# id: (kernel, stride, pad, count_include_pad, ceil_mode), on a 7 x 6 input. onnxruntime and torch agree on the
# forward of all of these (the test checks it), ceil_mode windows that hang over the end included.
AVERAGE_POOL_CASES = {
    "k3_s2_p1": (3, 2, 1, 0, 0),
    "k3_s2_p1_count_pad": (3, 2, 1, 1, 0),
    "k3_s2_p1_ceil": (3, 2, 1, 0, 1),
    "k3_s2_p1_count_pad_ceil": (3, 2, 1, 1, 1),
    "k2_s2_ceil": (2, 2, 0, 0, 1),
    "k2_s2_count_pad_ceil": (2, 2, 0, 1, 1),
    "k3_s1_p1_count_pad": (3, 1, 1, 1, 0),
}


def sum_pool_relevance(pool_sum, x, relevance):
    """The norm rule of an average pool: x_i * sum over its windows w of R_w / (sum of w's inputs).

    The pool's divisor cancels out of x_i * (1/d_w) * R_w / ((1/d_w) * sum_w), so the reference needs only the
    windows' positions (torch's divisor_override=1 sums them), not the count_include_pad / ceil_mode divisor
    conventions: it would catch a divisor that differs from the one the runtime divides by.
    """
    return proportional_rule(pool_sum, [x], relevance, eps=0.0)[0]


@pytest.mark.parametrize("case", AVERAGE_POOL_CASES)
def test_average_pool(case):
    kernel, stride, pad, count_include_pad, ceil_mode = AVERAGE_POOL_CASES[case]
    g = OpGraph(3, 7, 6)
    model = g.classifier(g.node("AveragePool", [g.relu_layer()], kernel_shape=[kernel] * 2, strides=[stride] * 2,
                                pads=[pad] * 4, count_include_pad=count_include_pad, ceil_mode=ceil_mode))

    def pool(v, divisor_override=None):
        return F.avg_pool2d(v, kernel, stride, pad, bool(ceil_mode), bool(count_include_pad),
                            divisor_override=divisor_override)

    # ReLU outputs, as pools see them: about half are 0, and a window of zeros gets relevance 0, not NaN.
    samples = random_samples([2, 3, 7, 6], seed=28)
    y_shape = pool(f64(samples[:1])).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(model, x, targets)

    a_ref = F.relu(f64(x))
    assert_matches(out.output, pool(a_ref).flatten(1), "forward")
    expected = sum_pool_relevance(lambda v: pool(v, divisor_override=1), a_ref, relevance_at_output(targets, y_shape))
    assert_matches(out.relevance(), expected)


# id: ([height, width], kernel, strides, dilations, pads [top, left, bottom, right]), all in ceil mode.
CEIL_MODE_CASES = {
    # The last window would start in the right padding: onnxruntime and torch drop it (4 x 4 windows, not 5 x 5).
    "k2_s2_p1_drops_last": ([7, 7], [2, 2], [2, 2], [1, 1], [1, 1, 1, 1]),
    "k3_s3_p1_drops_last": ([8, 11], [3, 3], [3, 3], [1, 1], [1, 1, 1, 1]),
    "asymmetric_pads_drops_last": ([6, 7], [2, 3], [2, 2], [1, 1], [0, 1, 1, 1]),
    # A window hangs over the end without starting in the padding: it is kept.
    "k3_s2_hangs_over": ([8, 10], [3, 3], [2, 2], [1, 1], [0, 0, 0, 0]),
    "asymmetric_pads": ([7, 8], [3, 2], [2, 2], [1, 1], [0, 1, 2, 1]),
    "kernel2x3_strides3x2_dilations2x1": ([9, 8], [2, 3], [3, 2], [2, 1], [1, 0, 1, 1]),
}


def ceil_mode_counts(case: str) -> tuple[list[int], list[int]]:
    """The window counts per axis: PyTorch's and onnxruntime's (one more than floor mode wherever a window hangs
    over the end, unless it would start past the input and its left padding), and ONNX's shape inference's before
    opset 22, which keeps that window too."""
    size, kernel, strides, dilations, pads = CEIL_MODE_CASES[case]
    runtime, onnx_counts = [], []
    for axis in range(2):
        span = size[axis] + pads[axis] + pads[axis + 2] - (kernel[axis] - 1) * dilations[axis] - 1
        count = -(-span // strides[axis]) + 1
        onnx_counts.append(count)
        runtime.append(count - ((count - 1) * strides[axis] >= size[axis] + pads[axis]))
    return runtime, onnx_counts


def ceil_mode_windows(v, fill, case: str):
    """The taps of each window [N, C, kh * kw, out_h, out_w], `fill` where they fall outside the input."""
    size, kernel, strides, dilations, pads = CEIL_MODE_CASES[case]
    counts, _ = ceil_mode_counts(case)
    ends = [max((n - 1) * s + (k - 1) * d + 1 - length - begin, 0)
            for n, length, k, s, d, begin in zip(counts, size, kernel, strides, dilations, pads)]
    padded = F.pad(v, (pads[1], ends[1], pads[0], ends[0]), value=fill)
    taps = F.unfold(padded, kernel, dilation=dilations, stride=strides)
    grid = [(p - (k - 1) * d - 1) // s + 1 for p, k, s, d in zip(padded.shape[2:], kernel, strides, dilations)]
    return taps.reshape(*v.shape[:2], -1, *grid)[..., :counts[0], :counts[1]]


def ceil_mode_params():
    """Each case at opset 22, and at opset 17 (TorchScript's) where ONNX's shape inference counts more windows: it
    does so before opset 22, and onnx_rcam takes onnxruntime's count instead (load.py). The other cases' window
    counts agree at every opset."""
    for case in CEIL_MODE_CASES:
        runtime, onnx_counts = ceil_mode_counts(case)
        yield pytest.param(case, 22, id=f"{case}-opset22")
        if runtime != onnx_counts:
            yield pytest.param(case, 17, id=f"{case}-opset17")


def ceil_mode_pool(op: str, case: str, opset: int, layer: str, **attrs):
    size, kernel, strides, dilations, pads = CEIL_MODE_CASES[case]
    if dilations != [1, 1]:
        attrs["dilations"] = dilations
        opset = max(opset, 19) if op == "AveragePool" else opset
    g = OpGraph(3, *size, opset=opset)
    a = g.signed_layer() if layer == "signed" else g.relu_layer()
    return g.classifier(g.node(op, [a], kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=1, **attrs))


@pytest.mark.parametrize("case, opset", ceil_mode_params())
def test_max_pool_ceil_mode(case, opset):
    model = ceil_mode_pool("MaxPool", case, opset, "signed")

    def pool(v):
        return ceil_mode_windows(v, -torch.inf, case).amax(dim=2)

    assert_routes_like_the_gradient(model, pool, distinct_samples([2, 3, *CEIL_MODE_CASES[case][0]], seed=31))


@pytest.mark.parametrize("count_include_pad", [0, 1], ids=["", "count_pad"])
@pytest.mark.parametrize("case, opset", ceil_mode_params())
def test_average_pool_ceil_mode(case, opset, count_include_pad):
    """The divisor cancels out of the norm rule (sum_pool_relevance): the reference sums each window's taps, and the
    window count is checked on the forward's output."""
    model = ceil_mode_pool("AveragePool", case, opset, "relu", count_include_pad=count_include_pad)

    def window_sums(v):
        return ceil_mode_windows(v, 0.0, case).sum(dim=2)

    samples = random_samples([2, 3, *CEIL_MODE_CASES[case][0]], seed=32)
    y_shape = window_sums(f64(samples[:1])).shape[1:]
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    out = explain(model, x, targets)

    assert out.output.shape[1] == int(np.prod(y_shape)), "window count"
    expected = sum_pool_relevance(window_sums, F.relu(f64(x)), relevance_at_output(targets, y_shape))
    assert_matches(out.relevance(), expected)


def spatial_mean(v):
    return v.mean(dim=(2, 3), keepdim=True)


def test_global_average_pool():
    g = OpGraph(4, 5, 6)
    model = g.classifier(g.node("GlobalAveragePool", [g.relu_layer()]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 6], seed=29), 4)
    out = explain(model, x, targets)

    a_ref = F.relu(f64(x))
    assert_matches(out.output, spatial_mean(a_ref).flatten(1), "forward")
    expected = proportional_rule(spatial_mean, [a_ref], relevance_at_output(targets, [4, 1, 1]), eps=0.0)[0]
    assert_matches(out.relevance(), expected)


# id: (op, opset, keepdims): opset 18 moved ReduceMean's axes from an attribute to an input (ReduceSum: opset 13).
REDUCE_CASES = {
    "ReduceMean_opset17_keepdims0": ("ReduceMean", 17, 0),
    "ReduceMean_opset17_keepdims1": ("ReduceMean", 17, 1),
    "ReduceMean_opset18_keepdims0": ("ReduceMean", 18, 0),
    "ReduceMean_opset18_keepdims1": ("ReduceMean", 18, 1),
    "ReduceSum_keepdims1": ("ReduceSum", 17, 1),
}


@pytest.mark.parametrize("case", REDUCE_CASES)
def test_spatial_reduction(case):
    op, opset, keepdims = REDUCE_CASES[case]
    g = OpGraph(4, 5, 6, opset=opset)
    a = g.relu_layer()
    if op == "ReduceMean" and opset < 18:
        reduced = g.node(op, [a], axes=[2, 3], keepdims=keepdims)
    else:
        reduced = g.node(op, [a, g.const([2, 3], np.int64)], keepdims=keepdims)
    model = g.classifier(reduced)
    x, targets = per_unit_batch(random_samples([2, 4, 5, 6], seed=30), 4)
    out = explain(model, x, targets)

    def reduce(v):
        return v.mean(dim=(2, 3)) if op == "ReduceMean" else v.sum(dim=(2, 3))

    a_ref = F.relu(f64(x))
    assert_matches(out.output, reduce(a_ref), "forward")
    expected = proportional_rule(reduce, [a_ref], onehot(targets, 4), eps=0.0)[0]
    assert_matches(out.relevance(), expected)


# ---------------------------------------------------------------------------------------------------------------
# Structural ops: relevance goes back where each value came from
# ---------------------------------------------------------------------------------------------------------------

# id: (ONNX nodes from a [N, 4, 3, 2] to a 2-D [N, 24] tensor, the same in torch). A final Gemm under z+ makes the
# relevance differ from position to position, so a wrong inverse reshape or permutation shows.
STRUCTURAL_CASES = {
    "Flatten": (lambda g, a: g.node("Flatten", [a], axis=1), lambda v: v.flatten(1)),
    "Reshape": (lambda g, a: g.node("Reshape", [g.node("Reshape", [a, g.const([0, 2, -1], np.int64)]),
                                                g.const([0, -1], np.int64)]),
                lambda v: v.reshape(len(v), 2, -1).reshape(len(v), -1)),
    # perm is not its own inverse, so applying it instead of its inverse would show.
    "Transpose": (lambda g, a: g.node("Flatten", [g.node("Transpose", [a], perm=[0, 2, 3, 1])], axis=1),
                  lambda v: v.permute(0, 2, 3, 1).flatten(1)),
    "Unsqueeze_Squeeze": (
        lambda g, a: g.node("Flatten", [g.node("Squeeze", [g.node("Unsqueeze", [a, g.const([1], np.int64)]),
                                                           g.const([1], np.int64)])], axis=1),
        lambda v: v.flatten(1)),
}


@pytest.mark.parametrize("case", STRUCTURAL_CASES)
def test_structural_op(case):
    emit, function = STRUCTURAL_CASES[case]
    matrix = weights([CLASSES, 24], seed=31)
    g = OpGraph(4, 3, 2)
    model = g.model(g.node("Gemm", [emit(g, g.signed_layer()), g.const(matrix)], out="logits", transB=1))
    x, targets = per_unit_batch(random_samples([3, 4, 3, 2], seed=32), CLASSES)
    out = explain(model, x, targets)

    def forward(v, w):
        return F.linear(function(v), w)

    assert_matches(out.output, forward(f64(x), f64(matrix)), "forward")
    assert_matches(out.relevance(), zplus_rule(forward, f64(x), f64(matrix), onehot(targets, CLASSES)))


def split(g: OpGraph, a: str, parts: int, sizes=None, **attrs) -> list[str]:
    """A Split node (OpGraph.node makes single-output nodes), with its sizes as an input if given."""
    outputs = [f"part_{len(g.nodes)}_{i}" for i in range(parts)]
    inputs = [a] if sizes is None else [a, g.const(sizes, np.int64)]
    g.nodes.append(helper.make_node("Split", inputs, outputs, name=f"node_{len(g.nodes)}_Split", **attrs))
    return outputs


def slice_node(g: OpGraph, a: str, starts, ends, axes, steps=None) -> str:
    inputs = [a] + [g.const(v, np.int64) for v in (starts, ends, axes)]
    return g.node("Slice", inputs + ([g.const(steps, np.int64)] if steps is not None else []))


def flat(g: OpGraph, v: str) -> str:
    return g.node("Flatten", [v], axis=1)


def computed_shape_reshape(g: OpGraph, a: str) -> str:
    """Reshape to [N, -1] with N read from Shape(a) at run time, as exporters write torch's x.view(x.size(0), -1):
    Shape, and the integer ops after it, lie on the relevance path without ever receiving relevance."""
    batch = slice_node(g, g.node("Shape", [a]), [0], [1], [0])
    return g.node("Reshape", [a, g.node("Concat", [batch, g.const([-1], np.int64)], axis=0)])


# id: (ONNX nodes from a [N, 4, 3, 2] to a 2-D tensor, the same in torch, opset). Parts that reach no logit get
# relevance 0; the final Gemm under z+ makes every other position's relevance different.
SELECTION_CASES = {
    "Split_sizes_one_part_unused": (
        lambda g, a: flat(g, g.node("Concat", [split(g, a, 3, sizes=[1, 2, 1], axis=1)[i] for i in (2, 0)], axis=1)),
        lambda v: torch.cat([v[:, 3:], v[:, :1]], 1).flatten(1), 17),
    "Split_num_outputs_uneven": (
        lambda g, a: flat(g, g.node("Concat", split(g, a, 2, axis=2, num_outputs=2)[::-1], axis=2)),
        lambda v: torch.cat([v[:, :, 2:], v[:, :, :2]], 2).flatten(1), 18),
    "Slice_unit_steps": (lambda g, a: flat(g, slice_node(g, a, [1, -2], [3, 100], [1, 2])),
                         lambda v: v[:, 1:3, -2:].flatten(1), 17),
    # Channels 3 and 1 (step -2 from the last), rows 0 and 2 (step 2).
    "Slice_strided_and_reversed": (lambda g, a: flat(g, slice_node(g, a, [-1, 0], [-100, 3], [1, 2], [-2, 2])),
                                   lambda v: v[:, [3, 1]][:, :, ::2].flatten(1), 17),
    "Gather_scalar_index": (lambda g, a: flat(g, g.node("Gather", [a, g.const(-1, np.int64)], axis=1)),
                            lambda v: v[:, -1].flatten(1), 17),
    "Gather_repeated_indices": (lambda g, a: flat(g, g.node("Gather", [a, g.const([2, 0, 2], np.int64)], axis=1)),
                                lambda v: v[:, [2, 0, 2]].flatten(1), 17),
    "Gather_2d_indices": (
        lambda g, a: flat(g, g.node("Gather", [a, g.const([[1, 0], [-1, 1]], np.int64)], axis=2)),
        lambda v: v[:, :, [[1, 0], [2, 1]]].flatten(1), 17),
    "Reshape_to_computed_shape": (computed_shape_reshape, lambda v: v.flatten(1), 17),
}


@pytest.mark.parametrize("case", SELECTION_CASES)
def test_selection_op(case):
    """Split, Slice, Gather: each value's relevance goes back to the position it was taken from, added up where it
    was taken twice, zero where it was not taken."""
    emit, function, opset = SELECTION_CASES[case]
    samples = random_samples([3, 4, 3, 2], seed=70)
    matrix = weights([CLASSES, function(f64(samples)).shape[1]], seed=71)
    g = OpGraph(4, 3, 2, opset=opset)
    model = g.model(g.node("Gemm", [emit(g, g.signed_layer()), g.const(matrix)], out="logits", transB=1))
    x, targets = per_unit_batch(samples, CLASSES)
    out = explain(model, x, targets)

    def forward(v, w):
        return F.linear(function(v), w)

    assert_matches(out.output, forward(f64(x), f64(matrix)), "forward")
    assert_matches(out.relevance(), zplus_rule(forward, f64(x), f64(matrix), onehot(targets, CLASSES)))


@pytest.mark.parametrize("axis", [1, -1], ids=["channels", "width_negative_axis"])
def test_concat(axis):
    """Concat(Conv(a), a): each slice of the relevance goes back to its own branch, and both reach a."""
    weight = weights([4, 4, 1, 1], seed=33)
    g = OpGraph(4, 3, 3)
    a = g.signed_layer()
    model = g.classifier(g.node("Concat", [g.node("Conv", [a, g.const(weight)]), a], axis=axis))
    y_shape = [8, 3, 3] if axis == 1 else [4, 3, 6]
    x, targets = per_unit_batch(random_samples([2, 4, 3, 3], seed=34), int(np.prod(y_shape)))
    out = explain(model, x, targets)

    a_ref = f64(x)
    forward = conv_forward([0, 0, 0, 0])
    assert_matches(out.output, torch.cat([forward(a_ref, f64(weight)), a_ref], dim=axis).flatten(1), "forward")
    relevance = relevance_at_output(targets, y_shape)
    from_conv, direct = relevance.split(relevance.shape[axis] // 2, dim=axis)
    assert_matches(out.relevance(), zplus_rule(forward, a_ref, f64(weight), from_conv) + direct)


def test_identity_and_dropout_are_dropped():
    weight = weights([3, 4, 3, 3], seed=35)
    g = OpGraph(4, 5, 5)
    kept = g.node("Dropout", [g.node("Identity", [g.signed_layer()])])
    model = g.classifier(g.node("Conv", [kept, g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=36), 3 * 5 * 5)
    out = explain(model, x, targets)

    forward = conv_forward([1, 1, 1, 1])
    assert_matches(out.output, forward(f64(x), f64(weight)).flatten(1), "forward")
    expected = zplus_rule(forward, f64(x), f64(weight), relevance_at_output(targets, [3, 5, 5]))
    assert_matches(out.relevance(), expected)


@pytest.mark.parametrize("normalizer", ["Softmax", "LogSoftmax"])
def test_final_softmax_is_bypassed(normalizer):
    """Relevance starts at the Softmax's input: under `logit`, R[t] = y[t] of the scores before normalisation."""
    weight = weights([3, 4, 3, 3], seed=37)
    g = OpGraph(4, 4, 4)
    scores = g.node("Flatten", [g.node("Conv", [g.signed_layer(), g.const(weight)], pads=[1, 1, 1, 1])], axis=1)
    model = g.model(g.node(normalizer, [scores], out="probabilities", axis=-1))
    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=38), 3 * 4 * 4)
    out = explain(model, x, targets, initial="logit")

    forward = conv_forward([1, 1, 1, 1])
    y = forward(f64(x), f64(weight))
    normalize = torch.softmax if normalizer == "Softmax" else torch.log_softmax
    assert_matches(out.output, normalize(y.flatten(1), dim=1), "forward")
    initial = (onehot(targets, 3 * 4 * 4) * y.flatten(1)).reshape(y.shape)
    assert_matches(out.relevance(), zplus_rule(forward, f64(x), f64(weight), initial))


# ---------------------------------------------------------------------------------------------------------------
# Add / Sum
# ---------------------------------------------------------------------------------------------------------------

def odd_activations(g: OpGraph, names):
    """Target layers computed from x by odd, increasing functions: signed, but of equal signs elementwise, so their
    sum never cancels (the proportional split is well-conditioned) while their ratios vary."""
    functions = {"p": ("LeakyRelu", dict(alpha=1.0)), "q": ("Tanh", {}), "r": ("Softsign", {})}
    return [g.node(functions[n][0], [g.x], out=n, **functions[n][1]) for n in names]


TORCH_ODD = {"p": lambda v: v, "q": torch.tanh, "r": F.softsign}


@pytest.mark.parametrize("op, names", [("Add", "pq"), ("Sum", "pqr")], ids=["Add", "Sum_of_three"])
def test_join_of_activations(op, names):
    """R_i = x_i / stab(sum_j x_j) * R, each input reported at its own target layer."""
    g = OpGraph(3, 4, 4)
    model = g.classifier(g.node(op, odd_activations(g, names)))
    x, targets = per_unit_batch(random_samples([2, 3, 4, 4], seed=39), 3 * 4 * 4)
    out = explain(model, x, targets, layers=list(names))

    parts = [TORCH_ODD[n](f64(x)) for n in names]
    assert_matches(out.output, sum(parts).flatten(1), "forward")
    expected = proportional_rule(lambda *vs: sum(vs), parts, relevance_at_output(targets, [3, 4, 4]), eps=1e-6)
    for name, relevance in zip(names, expected):
        assert_matches(out.relevance(name), relevance, f"relevance at {name}")


def test_difference_of_activations():
    """p - q (YOLOv8's box width x2 - x1): R_p = p / stab(p - q) * R, R_q = -q / stab(p - q) * R, conserving R;
    the gradient is g and -g."""
    g = OpGraph(3, 4, 4)
    p, tanh = odd_activations(g, "pq")
    q = g.node("Mul", [tanh, g.const(-1.0)], out="minus_q")  # p - (-tanh): as well-conditioned as a sum
    model = g.classifier(g.node("Sub", [p, q]))
    x, targets = per_unit_batch(random_samples([2, 3, 4, 4], seed=139), 3 * 4 * 4)
    out = explain(model, x, targets, layers=["p", "minus_q"])

    parts = [f64(x), -torch.tanh(f64(x))]
    assert_matches(out.output, (parts[0] - parts[1]).flatten(1), "forward")
    relevance = relevance_at_output(targets, [3, 4, 4])
    for name, expected in zip(["p", "minus_q"], proportional_rule(lambda u, v: u - v, parts, relevance, eps=1e-6)):
        assert_matches(out.relevance(name), expected, f"relevance at {name}")
    gradient = explain(model, x, targets, layers=["p", "minus_q"], composite=GRADIENT)
    assert_matches(gradient.relevance("p"), relevance)
    assert_matches(gradient.relevance("minus_q"), -relevance)


@pytest.mark.parametrize("constant_first", [False, True])
def test_difference_with_a_constant(constant_first):
    """a - c and c - a: LRP passes all relevance to a (the constant is a bias, the sign a weight); the gradient
    is g or -g."""
    g = OpGraph(3, 4, 4)
    a, c = g.signed_layer(), g.const(weights([3, 1, 1], seed=140))
    model = g.classifier(g.node("Sub", [c, a] if constant_first else [a, c]))
    x, targets = per_unit_batch(random_samples([2, 3, 4, 4], seed=141), 3 * 4 * 4)
    relevance = relevance_at_output(targets, [3, 4, 4])
    assert_matches(explain(model, x, targets).relevance(), relevance)
    gradient = explain(model, x, targets, composite=GRADIENT).relevance()
    assert_matches(gradient, -relevance if constant_first else relevance)


def test_residual_join():
    """a + Relu(Conv(a)): the norm split at the Add, z+ through the Conv branch, both parts summed at a."""
    weight, bias = weights([4, 4, 3, 3], seed=40), weights([4], seed=41)
    g = OpGraph(4, 4, 4)
    a = g.relu_layer()
    branch = g.node("Relu", [g.node("Conv", [a, g.const(weight), g.const(bias)], pads=[1, 1, 1, 1])])
    model = g.classifier(g.node("Add", [a, branch]))
    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=42), 4 * 4 * 4)
    out = explain(model, x, targets)

    a_ref = F.relu(f64(x))
    forward = conv_forward([1, 1, 1, 1])
    branch_ref = F.relu(forward(a_ref, f64(weight)) + f64(bias).reshape(-1, 1, 1))
    assert_matches(out.output, (a_ref + branch_ref).flatten(1), "forward")
    direct, through_branch = proportional_rule(lambda u, v: u + v, [a_ref, branch_ref],
                                               relevance_at_output(targets, [4, 4, 4]), eps=1e-6)
    assert_matches(out.relevance(), direct + zplus_rule(forward, a_ref, f64(weight), through_branch))


def test_join_of_tensors_whose_batch_dimensions_are_named_differently():
    """Exporters name one dynamic batch dimension differently along the graph (TorchScript at opset 13 with torch's
    own pad: `batch` on one branch, `unk__12` on the other). The join's inputs then differ in shape only by name:
    nothing is broadcast, and no reduction may be emitted (ReduceSum over an empty axes list reduces every axis)."""
    g = OpGraph(3, 4, 4)
    p, q = odd_activations(g, "pq")
    model = g.classifier(g.node("Add", [p, q]))
    renamed = helper.make_tensor_value_info("q", TensorProto.FLOAT, ["unk__12", 3, 4, 4])
    model.graph.value_info.append(renamed)
    x, targets = per_unit_batch(random_samples([2, 3, 4, 4], seed=39), 3 * 4 * 4)
    out = explain(model, x, targets, layers=["p", "q"])

    parts = [TORCH_ODD[n](f64(x)) for n in "pq"]
    expected = proportional_rule(lambda *vs: sum(vs), parts, relevance_at_output(targets, [3, 4, 4]), eps=1e-6)
    for name, relevance in zip("pq", expected):
        assert_matches(out.relevance(name), relevance, f"relevance at {name}")


def test_residual_join_before_relu():
    """Conv(Relu(Conv(a) + a)), ResNet's block end: the ReLU's relevance (z+ weighs it by the ReLU's output) vanishes
    wherever that output does, so the norm split reads the ReLU's output for the sum (they agree on that support)
    and the ReLU's output - a for the Conv branch. No generated node reads the sum, which onnxruntime then fuses
    with the Conv and the ReLU, and none tests its sign; the relevance is the formula's on the sum itself."""
    weight, bias, head = weights([4, 4, 3, 3], seed=44), weights([4], seed=45), weights([3, 4, 3, 3], seed=46)
    g = OpGraph(4, 4, 4)
    a = g.relu_layer()
    joined = g.node("Add", [g.node("Conv", [a, g.const(weight), g.const(bias)], pads=[1, 1, 1, 1]), a], out="s")
    model = g.classifier(g.node("Conv", [g.node("Relu", [joined]), g.const(head)], pads=[1, 1, 1, 1]))
    generated = [n for n in augment(model).graph.node if n.name.startswith("rcam/")]
    assert not [n.name for n in generated if "s" in n.input or n.op_type == "GreaterOrEqual"]

    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=47), 3 * 4 * 4)
    out = explain(model, x, targets)
    forward = conv_forward([1, 1, 1, 1])
    a_ref = F.relu(f64(x))
    branch_ref = forward(a_ref, f64(weight)) + f64(bias).reshape(-1, 1, 1)
    y_ref = F.relu(branch_ref + a_ref)
    assert_matches(out.output, forward(y_ref, f64(head)).flatten(1), "forward")
    at_sum = zplus_rule(forward, y_ref, f64(head), relevance_at_output(targets, [3, 4, 4]))
    through_branch, direct = proportional_rule(lambda u, v: u + v, [branch_ref, a_ref], at_sum, eps=1e-6)
    assert_matches(out.relevance(), direct + zplus_rule(forward, a_ref, f64(weight), through_branch))


def test_projection_join_before_relu():
    """Conv(Relu(Conv1(a) + Conv2(a))), ResNet's projection shortcut: onnxruntime fuses the sum into one of the two
    Convs, so one of them is recomputed from a private copy of its Conv and the other is the ReLU's output minus
    that copy. One copy, however many generated nodes read the two branches; relevance as the formula's."""
    first, second = weights([4, 4, 3, 3], seed=48), weights([4, 4, 1, 1], seed=49)
    head = weights([3, 4, 3, 3], seed=50)
    g = OpGraph(4, 4, 4)
    a = g.relu_layer()
    joined = g.node("Add", [g.node("Conv", [a, g.const(first)], pads=[1, 1, 1, 1]),
                            g.node("Conv", [a, g.const(second)])])
    model = g.classifier(g.node("Conv", [g.node("Relu", [joined]), g.const(head)], pads=[1, 1, 1, 1]))
    generated = [n for n in augment(model).graph.node if n.name.startswith("rcam/")]
    assert len([n for n in generated if n.op_type == "Conv" and n.output[0].startswith("rcam/copy")]) == 1

    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=51), 3 * 4 * 4)
    out = explain(model, x, targets)
    padded, pointwise = conv_forward([1, 1, 1, 1]), conv_forward([0, 0, 0, 0])
    a_ref = F.relu(f64(x))
    branches = [padded(a_ref, f64(first)), pointwise(a_ref, f64(second))]
    y_ref = F.relu(branches[0] + branches[1])
    assert_matches(out.output, padded(y_ref, f64(head)).flatten(1), "forward")
    at_sum = zplus_rule(padded, y_ref, f64(head), relevance_at_output(targets, [3, 4, 4]))
    to_first, to_second = proportional_rule(lambda u, v: u + v, branches, at_sum, eps=1e-6)
    expected = zplus_rule(padded, a_ref, f64(first), to_first) + zplus_rule(pointwise, a_ref, f64(second), to_second)
    assert_matches(out.relevance(), expected)


def test_broadcast_join():
    """p [N, C, H, W] + GlobalAveragePool(p) [N, C, 1, 1]: the pooled share is summed over the broadcast grid and
    goes back to p through the pool, where it adds to p's direct share."""
    g = OpGraph(3, 4, 5)
    p = g.relu_layer("p")
    model = g.classifier(g.node("Add", [p, g.node("GlobalAveragePool", [p])]))
    x, targets = per_unit_batch(random_samples([2, 3, 4, 5], seed=43), 3 * 4 * 5)
    out = explain(model, x, targets, layers=["p"])

    p_ref = F.relu(f64(x))
    pooled_ref = spatial_mean(p_ref)
    assert_matches(out.output, (p_ref + pooled_ref).flatten(1), "forward")
    direct, to_pool = proportional_rule(lambda u, v: u + v, [p_ref, pooled_ref],
                                       relevance_at_output(targets, [3, 4, 5]), eps=1e-6)
    through_pool = proportional_rule(spatial_mean, [p_ref], to_pool, eps=0.0)[0]
    assert_matches(out.relevance("p"), direct + through_pool)


def test_add_constant_passes_to_activation():
    """a + bias -> Conv: the constant takes no relevance, a gets all of the Conv's z+ relevance at a + bias. a is a
    ReLU output, but a + bias is signed: z+ must not skip its x- half."""
    weight, bias = weights([3, 4, 3, 3], seed=44), weights([4, 1, 1], seed=45)
    g = OpGraph(4, 4, 4)
    shifted = g.node("Add", [g.relu_layer(), g.const(bias)])
    model = g.classifier(g.node("Conv", [shifted, g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=46), 3 * 4 * 4)
    out = explain(model, x, targets)

    forward = conv_forward([1, 1, 1, 1])
    shifted_ref = F.relu(f64(x)) + f64(bias)
    assert (bias < 0).any()
    assert_matches(out.output, forward(shifted_ref, f64(weight)).flatten(1), "forward")
    expected = zplus_rule(forward, shifted_ref, f64(weight), relevance_at_output(targets, [3, 4, 4]))
    assert_matches(out.relevance(), expected)


def test_add_constant_broadcasts_activation():
    """GlobalAveragePool(a) [N, C, 1, 1] + constant [1, C, H, W]: the pooled activation was broadcast, so it takes
    the relevance summed over the grid, which the pool then hands back to a."""
    bias = weights([1, 3, 4, 5], seed=47)
    g = OpGraph(3, 4, 5)
    a = g.relu_layer()
    model = g.classifier(g.node("Add", [g.node("GlobalAveragePool", [a]), g.const(bias)]))
    x, targets = per_unit_batch(random_samples([2, 3, 4, 5], seed=48), 3 * 4 * 5)
    out = explain(model, x, targets)

    a_ref = F.relu(f64(x))
    assert_matches(out.output, (spatial_mean(a_ref) + f64(bias)).flatten(1), "forward")
    pooled_relevance = relevance_at_output(targets, [3, 4, 5]).sum(dim=(2, 3), keepdim=True)
    assert_matches(out.relevance(), proportional_rule(spatial_mean, [a_ref], pooled_relevance, eps=0.0)[0])


# ---------------------------------------------------------------------------------------------------------------
# Products: gates held constant under LRP, the product and quotient rules under the gradient rule
# ---------------------------------------------------------------------------------------------------------------

GATES = {
    "Sigmoid": (lambda g, v: g.node("Sigmoid", [v]), torch.sigmoid),
    "HardSigmoid": (lambda g, v: g.node("HardSigmoid", [v], alpha=1 / 6, beta=0.5), F.hardsigmoid),
}
# id: (gate written first, the gate computed as [N, C] by a Gemm and unsqueezed to [N, C, 1, 1] before the Mul)
SE_CASES = {"gate_times_x": (True, False), "x_times_gate": (False, False), "x_times_unsqueezed_gate": (False, True)}


def assert_transform_then_conv(out, x, targets, transform, weight, composite="rcam"):
    """The model is a -> transform -> Conv(weight, pads 1) -> logits. rcam holds transform's gates and divisors
    constant: a gets the Conv's z+ relevance at transform(a) in full; gradient is autograd through transform."""
    forward = conv_forward([1, 1, 1, 1])
    a_ref = f64(x)
    relevance = relevance_at_output(targets, [weight.shape[0], *x.shape[2:]])
    assert_matches(out.output, forward(transform(a_ref), f64(weight)).flatten(1), "forward")
    if composite == "rcam":
        expected = zplus_rule(forward, transform(a_ref), f64(weight), relevance)
    else:
        expected = torch.autograd.functional.vjp(lambda v: forward(transform(v), f64(weight)), a_ref, relevance)[1]
    assert_matches(out.relevance(), expected)


@pytest.mark.parametrize("composite", ["rcam", "gradient"])
@pytest.mark.parametrize("case", SE_CASES)
@pytest.mark.parametrize("gate", GATES)
def test_squeeze_excitation(gate, case, composite):
    """a * gate(W GlobalAveragePool(a)) [N, C, 1, 1], then a Conv. Under rcam the gate is held constant: a gets the
    Conv's z+ relevance at the product in full and the SE branch nothing. Under gradient, the product rule: R * gate
    to a directly, and R * a, summed over the grid, back through the gate and the branch to a."""
    emit_gate, gate_function = GATES[gate]
    gate_first, unsqueezed = SE_CASES[case]
    squeeze, squeeze_bias = weights([4, 4], seed=62), weights([4], seed=63)
    weight = weights([3, 4, 3, 3], seed=64)
    g = OpGraph(4, 5, 5)
    a = g.signed_layer()
    pooled = g.node("GlobalAveragePool", [a])
    if unsqueezed:
        squeezed = g.node("Gemm", [g.node("Flatten", [pooled], axis=1), g.const(squeeze), g.const(squeeze_bias)],
                          transB=1)
        scale = g.node("Unsqueeze", [emit_gate(g, squeezed), g.const([2, 3], np.int64)])
    else:
        scale = emit_gate(g, g.node("Conv", [pooled, g.const(squeeze.reshape(4, 4, 1, 1)), g.const(squeeze_bias)]))
    gated = g.node("Mul", [scale, a] if gate_first else [a, scale])
    model = g.classifier(g.node("Conv", [gated, g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=65), 3 * 5 * 5)
    out = explain(model, x, targets, composite=GRADIENT if composite == "gradient" else composite)

    def excite(v):
        return v * gate_function(F.linear(v.mean(dim=(2, 3)), f64(squeeze), f64(squeeze_bias)))[:, :, None, None]

    assert_transform_then_conv(out, x, targets, excite, weight, composite)


@pytest.mark.parametrize("composite", ["rcam", "gradient"])
@pytest.mark.parametrize("gate", GATES)
def test_self_gated_activation(gate, composite):
    """SiLU (x * sigmoid(x)) and hard-swish written as x * hardsigmoid(x): rcam passes the Conv's z+ relevance at
    the product to x; gradient gives the derivative of the whole activation, both factors' shares."""
    emit_gate, gate_function = GATES[gate]
    weight = weights([3, 4, 3, 3], seed=66)
    g = OpGraph(4, 5, 5)
    a = g.signed_layer()
    model = g.classifier(g.node("Conv", [g.node("Mul", [a, emit_gate(g, a)]), g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=67, scale=4.0), 3 * 5 * 5)
    out = explain(model, x, targets, composite=GRADIENT if composite == "gradient" else composite)

    assert_transform_then_conv(out, x, targets, lambda v: v * gate_function(v), weight, composite)


def _gelu_erf(g, v):
    """GELU as exporters write it before opset 20: x * (1 + erf(x / sqrt 2)) * 0.5."""
    gate = g.node("Add", [g.node("Erf", [g.node("Div", [v, g.const(np.sqrt(2.0))])]), g.const(1.0)])
    return g.node("Mul", [g.node("Mul", [v, gate]), g.const(0.5)])


def _gelu_tanh(g, v):
    """TorchScript's tanh GELU: (x * 0.5) * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x * x * x)))."""
    cube = g.node("Mul", [g.node("Mul", [v, v]), v])
    inner = g.node("Mul", [g.node("Add", [v, g.node("Mul", [cube, g.const(0.044715)])]),
                           g.const(np.sqrt(2.0 / np.pi))])
    return g.node("Mul", [g.node("Mul", [v, g.const(0.5)]), g.node("Add", [g.node("Tanh", [inner]), g.const(1.0)])])


# id: (the activation written out as exporters do on (graph, x), its torch function)
SELF_GATED = {
    "gelu_erf": (_gelu_erf, F.gelu),
    "gelu_tanh": (_gelu_tanh, lambda v: F.gelu(v, approximate="tanh")),
    "mish": (lambda g, v: g.node("Mul", [v, g.node("Tanh", [g.node("Softplus", [v])])]), F.mish),
    "cube": (lambda g, v: g.node("Mul", [v, g.node("Mul", [v, v])]), lambda v: v ** 3),
}


@pytest.mark.parametrize("composite", ["rcam", "gradient"])
@pytest.mark.parametrize("activation", SELF_GATED)
def test_written_out_self_gating(activation, composite):
    """x times an element-wise function of x, however an exporter spells it: rcam holds that factor constant and
    passes the Conv's z+ relevance to x, as for an activation; gradient is the derivative of the whole."""
    emit, function = SELF_GATED[activation]
    weight = weights([3, 4, 3, 3], seed=98)
    g = OpGraph(4, 5, 5)
    model = g.classifier(g.node("Conv", [emit(g, g.signed_layer()), g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=99, scale=2.0), 3 * 5 * 5)
    out = explain(model, x, targets, composite=GRADIENT if composite == "gradient" else composite)

    assert_transform_then_conv(out, x, targets, function, weight, composite)


@pytest.mark.parametrize("composite", ["rcam", "gradient"])
def test_where_routes_each_element_to_its_branch(composite):
    """Where(x > 1, x, softplus(x)), dynamo's Softplus: relevance (and gradient) goes where the value came from;
    under rcam the softplus passes it on, so x gets all of it."""
    weight = weights([3, 4, 3, 3], seed=100)
    g = OpGraph(4, 5, 5)
    a = g.signed_layer()
    chosen = g.node("Where", [g.node("Greater", [a, g.const(1.0)]), a, g.node("Softplus", [a])])
    model = g.classifier(g.node("Conv", [chosen, g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=101, scale=2.0), 3 * 5 * 5)
    out = explain(model, x, targets, composite=GRADIENT if composite == "gradient" else composite)

    assert_transform_then_conv(out, x, targets, lambda v: torch.where(v > 1, v, F.softplus(v)), weight, composite)


def test_gate_on_a_gated_tensor():
    """s * sigmoid(s) with s = sigmoid(a) (a SiLU after a Sigmoid): both factors come from a Sigmoid; the gate is the
    one computed from the other, and rcam passes the Conv's z+ relevance at the product through s to a."""
    weight = weights([3, 4, 3, 3], seed=70)
    g = OpGraph(4, 5, 5)
    s = g.node("Sigmoid", [g.signed_layer()])
    model = g.classifier(g.node("Conv", [g.node("Mul", [g.node("Sigmoid", [s]), s]), g.const(weight)],
                                pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=71, scale=2.0), 3 * 5 * 5)
    out = explain(model, x, targets)

    assert_transform_then_conv(out, x, targets, lambda v: torch.sigmoid(v) * torch.sigmoid(torch.sigmoid(v)), weight)


def test_a_layer_only_gates_read_gets_a_clear_error():
    """The sigmoid of x * sigmoid(x) is a 4-D activation on the path, but LRP holds the gate constant."""
    g = OpGraph(4, 5, 5)
    a = g.signed_layer()
    model = g.classifier(g.node("Conv", [g.node("Mul", [a, g.node("Sigmoid", [a], out="gate")]),
                                         g.const(weights([3, 4, 3, 3], seed=72))], pads=[1, 1, 1, 1]))
    with pytest.raises(onnx_rcam.LayerSelectionError, match="no relevance reaches 'gate'"):
        onnx_rcam.augment(model, layers=["gate"])


@pytest.mark.parametrize("composite", ["rcam", "gradient"])
def test_division_by_a_normaliser(composite):
    """a / (1 + GlobalAveragePool(a^2))^0.75, an LRN-like normaliser [N, C, 1, 1], then a Conv: rcam holds the
    divisor constant and passes the relevance to a; gradient follows the quotient rule through the divisor too."""
    weight = weights([3, 4, 3, 3], seed=68)
    g = OpGraph(4, 5, 5)
    a = g.signed_layer()
    energy = g.node("Add", [g.node("GlobalAveragePool", [g.node("Pow", [a, g.const(2.0)])]), g.const(1.0)])
    normalised = g.node("Div", [a, g.node("Pow", [energy, g.const(0.75)])])
    model = g.classifier(g.node("Conv", [normalised, g.const(weight)], pads=[1, 1, 1, 1]))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=69, scale=2.0), 3 * 5 * 5)
    out = explain(model, x, targets, composite=GRADIENT if composite == "gradient" else composite)

    def normalise(v):
        return v / (1 + (v ** 2).mean(dim=(2, 3), keepdim=True)) ** 0.75

    assert_transform_then_conv(out, x, targets, normalise, weight, composite)


# id: (the product or quotient on (graph, a), what the error says)
UNSUPPORTED_PRODUCTS = {
    "neither_factor_a_gate": (lambda g, a: g.node("Mul", [g.node("Relu", [a]), g.node("Tanh", [a])]),
                              "neither factor is a gate"),
    "both_factors_gates": (lambda g, a: g.node("Mul", [g.node("Sigmoid", [a]), g.node("HardSigmoid", [a])]),
                           "both factors are gates"),
}


@pytest.mark.parametrize("case", UNSUPPORTED_PRODUCTS)
def test_unsupported_product_names_the_node(case):
    emit, why = UNSUPPORTED_PRODUCTS[case]
    g = OpGraph(2, 3, 3)
    product = emit(g, g.signed_layer())
    node = g.nodes[-1]
    with pytest.raises(onnx_rcam.UnsupportedOpError, match=why) as error:
        onnx_rcam.augment(g.classifier(product), layers=["a"])
    assert f"{node.op_type} node {node.name!r}" in str(error.value)


def test_sign_rules():
    """Which new ops' outputs are known to be non-negative: gates always, sign-keeping activations and selections
    of a non-negative input, products and quotients of non-negative factors."""
    g = OpGraph(4, 3, 2, opset=18)
    signed, relu = g.signed_layer(), g.relu_layer("r")
    probes = {
        "sigmoid": (g.node("Sigmoid", [signed]), True),
        "hard_sigmoid": (g.node("HardSigmoid", [signed]), True),
        "tanh_of_signed": (g.node("Tanh", [signed]), False),
        "tanh_of_relu": (g.node("Tanh", [relu]), True),
        "hard_swish_of_signed": (g.node("HardSwish", [signed]), False),
        "hard_swish_of_relu": (g.node("HardSwish", [relu]), True),
        "lrn_of_relu": (g.node("LRN", [relu], size=3), True),
        "relu_times_gate": (g.node("Mul", [relu, g.node("Sigmoid", [signed])]), True),
        "signed_times_gate": (g.node("Mul", [signed, g.node("Sigmoid", [signed])]), False),
        "relu_over_positive": (g.node("Div", [relu, g.const(2.0)]), True),
        "relu_over_negative": (g.node("Div", [relu, g.const(-2.0)]), False),
        "slice_of_relu": (g.node("Slice", [relu, g.const([1], np.int64), g.const([3], np.int64),
                                           g.const([1], np.int64)]), True),
        "gather_of_relu": (g.node("Gather", [relu, g.const([0, 2], np.int64)], axis=1), True),
        "split_of_relu": (split(g, relu, 2, axis=1, num_outputs=2)[1], True),
    }
    known = nonnegative_tensors(gs.import_onnx(g.model(probes["sigmoid"][0])))
    assert {name: tensor in known for name, (tensor, _) in probes.items()} == \
        {name: expected for name, (_, expected) in probes.items()}


# ---------------------------------------------------------------------------------------------------------------
# Errors and degenerate inputs
# ---------------------------------------------------------------------------------------------------------------

def test_unsupported_op_names_op_node_and_supported_ops():
    g = OpGraph(2, 3, 3)
    model = g.classifier(g.node("Sin", [g.signed_layer()]))
    with pytest.raises(onnx_rcam.UnsupportedOpError) as error:
        onnx_rcam.augment(model, layers=["a"])
    message = str(error.value)
    assert "Sin" in message and "node_1_Sin" in message
    assert "Supported ops:" in message
    for op in ("Conv", "Gemm", "MaxPool", "Add", "Concat"):
        assert op in message.split("Supported ops:")[1]
    assert error.value.exit_code == 4


def small_residual_net(with_bias: bool):
    """x -> Conv -> Relu (a) -> MaxPool (m) -> Conv -> Relu -> Add with m (s) -> GlobalAveragePool -> Gemm."""
    def bias(count, seed):
        return [g.const(weights([count], seed=seed))] if with_bias else []

    g = OpGraph(3, 8, 8)
    conv1 = g.node("Conv", [g.x, g.const(weights([4, 3, 3, 3], seed=50))] + bias(4, 51), pads=[1, 1, 1, 1])
    a = g.node("Relu", [conv1], out="a")
    pooled = g.node("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    conv2 = g.node("Conv", [pooled, g.const(weights([4, 4, 3, 3], seed=52))] + bias(4, 53), pads=[1, 1, 1, 1])
    joined = g.node("Add", [pooled, g.node("Relu", [conv2])], out="s")
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [joined])], axis=1)
    return g.model(g.node("Gemm", [flat, g.const(weights([3, 4], seed=54))] + bias(3, 55), out="logits", transB=1))


@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("initial", ["contrastive", "onehot", "logit"])
@pytest.mark.parametrize("composite", ["rcam", "epsilon_plus"])
def test_degenerate_inputs_stay_finite(composite, initial, with_bias):
    """An all-zero and a constant image: every division is guarded or stabilised, so nothing is NaN or Inf, maps
    stay in [0, 1], and a constant raw map gives an all-zero map."""
    model = small_residual_net(with_bias)
    images = np.stack([np.zeros([3, 8, 8]), np.full([3, 8, 8], 0.7)]).astype(np.float32)
    out = explain(model, images, np.array([-1, -1]), layers=["a", "s"], composite=composite, initial=initial)

    for name, value in out.outputs.items():
        assert np.all(np.isfinite(value)), f"{name} is not finite"
    for layer in ("a", "s"):
        raw, heat = out.raw(layer), out.map(layer)
        assert heat.shape == (2, 8, 8) and heat.min() >= 0.0 and heat.max() <= 1.0
        constant = np.ptp(raw.reshape(2, -1), axis=1) == 0
        assert np.all(heat[constant] == 0.0)
    # On the zero image a = Relu(bias) (or 0) is the same at every position: its raw map is constant.
    assert np.ptp(out.raw("a")[0]) == 0 and np.all(out.map("a")[0] == 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Resize: a linear map of each grid; its transpose is the exact adjoint
# ---------------------------------------------------------------------------------------------------------------

# id: (attributes, scales or None, sizes or None, the torch function where torch has the same mode)
RESIZE_CASES = {
    "nearest_x2": ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                   [1, 1, 2, 2], None, lambda v: F.interpolate(v, scale_factor=2, mode="nearest")),
    "linear_half_pixel_x2": ({"mode": "linear"}, [1, 1, 2, 2], None,
                             lambda v: F.interpolate(v, scale_factor=2, mode="bilinear", align_corners=False)),
    "linear_align_corners": ({"mode": "linear", "coordinate_transformation_mode": "align_corners", "axes": [2, 3]},
                             None, [7, 9],
                             lambda v: F.interpolate(v, size=(7, 9), mode="bilinear", align_corners=True)),
    "linear_pytorch_half_pixel_down": ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel",
                                        "axes": [2, 3]}, None, [3, 2], None),
    "nearest_round_prefer_ceil_x1_5": ({"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                                        "nearest_mode": "round_prefer_ceil"}, [1, 1, 1.5, 1.5], None, None),
    "linear_asymmetric_x3": ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 3, 2], None,
                             None),
}


def resize_graph(case):
    """a -> Resize -> Flatten; opset 18 for the axes attribute (sizes of the spatial axes only: the batch is free)."""
    attrs, scales, sizes, _ = RESIZE_CASES[case]
    g = OpGraph(3, 4, 5, opset=18)
    inputs = [g.signed_layer(), "", g.const(scales) if scales else ""] + ([g.const(sizes, np.int64)] if sizes else [])
    return g.classifier(g.node("Resize", inputs, **attrs))


@pytest.mark.parametrize("case", RESIZE_CASES)
def test_resize_transpose_is_the_adjoint(case):
    """Under gradient, with one sample per output unit j explaining logit j, the relevance at a is row j of the
    Resize's matrix: sum_i A[j, i] a_i must give output j, whatever the mode (no reference needed)."""
    model = resize_graph(case)
    units = int(np.prod(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value))
    x = random_samples([1, 3, 4, 5], seed=102)
    repeated, targets = per_unit_batch(x, units)
    out = explain(model, repeated, targets, composite=GRADIENT)
    rows = out.relevance().reshape(units, -1).astype(np.float64)
    np.testing.assert_allclose(rows @ x.reshape(-1).astype(np.float64), out.output[0].astype(np.float64),
                               rtol=1e-5, atol=1e-6)
    assert np.all(rows >= 0), "nearest and linear resizing weigh with non-negative weights"


@pytest.mark.parametrize("case", [c for c in RESIZE_CASES if RESIZE_CASES[c][3] is not None])
def test_resize_against_torch(case):
    """rcam redistributes in proportion to what each input pixel contributes (a pool's rule); gradient is autograd's."""
    function = RESIZE_CASES[case][3]
    model = resize_graph(case)
    units = int(np.prod(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value))
    x = random_samples([2, 3, 4, 5], seed=103, positive=True)
    repeated, targets = per_unit_batch(x, units)
    out = explain(model, repeated, targets)
    resized = function(f64(repeated))
    assert_matches(out.output, resized.flatten(1), "forward")
    relevance = relevance_at_output(targets, resized.shape[1:])
    assert_matches(out.relevance(), proportional_rule(function, [f64(repeated)], relevance, eps=0.0)[0])
    gradient = explain(model, repeated, targets, composite=GRADIENT)
    _, expected = torch.autograd.functional.vjp(function, f64(repeated), relevance)
    assert_matches(gradient.relevance(), expected)


# ---------------------------------------------------------------------------------------------------------------
# Attention: softmax(Q K^T) V over the rows of each channel
# ---------------------------------------------------------------------------------------------------------------

def attention_model(spelling: str = "matmul"):
    """Each channel of a [N, C, T, D] layer as T tokens of D features: Q, K, V = a W_q, a W_k, a W_v (constant
    [D, D] weights), A = softmax(Q K^T / sqrt D), y = A V; the layer `v` is V. Spelled with MatMul (and a
    Transpose), or with Einsum as einsum-based implementations write it."""
    wq, wk, wv = (weights([5, 5], seed=s) for s in (104, 105, 106))
    g = OpGraph(3, 4, 5)
    a = g.signed_layer()
    if spelling == "einsum":
        q, k = (g.node("Einsum", [a, g.const(w)], equation="nctd,de->ncte") for w in (wq, wk))
        v = g.node("Einsum", [a, g.const(wv)], out="v", equation="nctd,de->ncte")
        scores = g.node("Einsum", [q, k], equation="ncid,ncjd->ncij")
    else:
        q, k = g.node("MatMul", [a, g.const(wq)]), g.node("MatMul", [a, g.const(wk)])
        v = g.node("MatMul", [a, g.const(wv)], out="v")
        scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    weighted = g.node("Softmax", [g.node("Div", [scores, g.const(np.sqrt(5.0))])], axis=-1)
    y = g.node("Einsum", [weighted, v], equation="ncij,ncjd->ncid") if spelling == "einsum" else \
        g.node("MatMul", [weighted, v])
    return g.classifier(y), (wq, wk, wv)


def attention_reference(x, wq, wk, wv):
    a = f64(x)
    scores = (a @ f64(wq)) @ (a @ f64(wk)).transpose(-1, -2) / np.sqrt(5.0)
    return torch.softmax(scores, -1), a @ f64(wv)


@pytest.mark.parametrize("spelling", ["matmul", "einsum"])
def test_attention_holds_the_weights_constant(spelling):
    """rcam: the values get R_V = V * A^T (R / stab(A V)) (LRP-epsilon, A held constant: CP-LRP, AttnLRP); V = a W_v
    passes it on under z+; the queries and keys get nothing."""
    model, (wq, wk, wv) = attention_model(spelling)
    x, targets = per_unit_batch(random_samples([2, 3, 4, 5], seed=107), 3 * 4 * 5)
    out = explain(model, x, targets, layers=["a", "v"])

    attention, values = attention_reference(x, wq, wk, wv)
    assert_matches(out.output, (attention @ values).flatten(1), "forward")
    relevance = relevance_at_output(targets, [3, 4, 5])
    (at_values,) = proportional_rule(lambda v: attention @ v, [values], relevance, eps=1e-6)
    assert_matches(out.relevance("v"), at_values)
    assert_matches(out.relevance("a"), zplus_rule(lambda v, w: v @ w, f64(x), f64(wv), at_values))


@pytest.mark.parametrize("spelling", ["matmul", "einsum"])
def test_attention_gradient_is_autograd(spelling):
    """gradient: the chain rule through both products and the softmax, queries and keys included."""
    model, (wq, wk, wv) = attention_model(spelling)
    x, targets = per_unit_batch(random_samples([2, 3, 4, 5], seed=108), 3 * 4 * 5)
    out = explain(model, x, targets, composite=GRADIENT)

    def network(v):
        attention = torch.softmax((v @ f64(wq)) @ (v @ f64(wk)).transpose(-1, -2) / np.sqrt(5.0), -1)
        return (attention @ (v @ f64(wv))).flatten(1)

    logits, gradient = torch.autograd.functional.vjp(network, f64(x), onehot(targets, 3 * 4 * 5))
    assert_matches(out.output, logits, "forward")
    assert_matches(out.relevance(), gradient)


def test_a_product_of_activations_that_is_not_attention_is_refused_under_lrp():
    g = OpGraph(3, 4, 4)
    a = g.signed_layer()
    model = g.classifier(g.node("MatMul", [g.node("Relu", [a]), g.node("Tanh", [a])]))
    with pytest.raises(onnx_rcam.UnsupportedOpError, match="neither of which is attention weights"):
        onnx_rcam.augment(model, layers=["a"])
    onnx_rcam.augment(model, layers=["a"], composite={"*": "gradient"})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_a_computed_weight_is_a_product_of_activations(trans_b):
    """Gemm(A, B, C) with B computed at run time (a static batch of 1, as fixed-batch converters write it):
    alpha * A B' + beta * C, differentiated through both operands under gradient, refused under LRP as MatMul is."""
    g = OpGraph(2, 2, 6)
    g.input_shape = [1, 2, 2, 6]
    a = g.signed_layer()
    left = g.node("Reshape", [g.node("Relu", [a]), g.const([4, 6], np.int64)])
    right = g.node("Reshape", [g.node("Tanh", [a]), g.const([4, 6] if trans_b else [6, 4], np.int64)])
    bias = weights([4], seed=120)
    y = g.node("Gemm", [left, right, g.const(bias)], alpha=0.5, beta=2.0, transB=trans_b)
    model = g.model(g.node("Reshape", [y, g.const([1, 16], np.int64)], out="logits"))
    x = random_samples([1, 2, 2, 6], seed=121)
    with pytest.raises(onnx_rcam.UnsupportedOpError, match="neither of which is attention weights"):
        onnx_rcam.augment(model, layers=["a"])

    def network(v):
        b = torch.tanh(v).reshape(4, 6).T if trans_b else torch.tanh(v).reshape(6, 4)
        return (0.5 * torch.relu(v).reshape(4, 6) @ b + 2.0 * f64(bias)).reshape(1, 16)

    for target in (0, 7, 15):
        out = explain(model, x, np.array([target]), composite=GRADIENT)
        logits, gradient = torch.autograd.functional.vjp(network, f64(x), onehot(np.array([target]), 16))
        assert_matches(out.output, logits, "forward")
        assert_matches(out.relevance(), gradient)
