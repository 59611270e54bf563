"""Each LRP rule on its own, in onnxruntime, against a direct torch implementation of its formula (float64).

The rules are chosen per op by a composite table, passed the way a user passes one: a JSON file (tests/opgraph.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import onnx_rcam
from onnx_rcam.rules import RULES, Composite
from opgraph import (OpGraph, assert_matches, conv_forward, explain, f64, onehot, per_unit_batch, random_samples,
                     relevance_at_output, weights)
from reference import alphabeta_rule, connectivity_rule, gamma_rule, proportional_rule, zbox_rule, zplus_rule

CLASSES = 5


def conv_classifier(g: OpGraph, a: str, weight, bias=None, **attrs):
    inputs = [a, g.const(weight)] + ([] if bias is None else [g.const(bias)])
    return g.classifier(g.node("Conv", inputs, **attrs))


def gemm_classifier(g: OpGraph, a: str, matrix, bias=None):
    inputs = [g.node("Flatten", [a], axis=1), g.const(matrix)] + ([] if bias is None else [g.const(bias)])
    return g.model(g.node("Gemm", inputs, out="logits", transB=1))


def linear(v, w):
    return F.linear(v.flatten(1), w)


# ---------------------------------------------------------------------------------------------------------------
# alpha-beta, epsilon, norm against their formulas
# ---------------------------------------------------------------------------------------------------------------

def signed_linear_case(op: str, seed: int):
    """A strided, padded Conv or a Gemm with a bias (which these rules ignore) over a signed layer a: the weight,
    the model, the layer's forward without bias (torch) and its output's shape."""
    weight = weights([3, 4, 3, 3], seed=seed) if op == "Conv" else weights([CLASSES, 4 * 4 * 4], seed=seed)
    bias = weights([len(weight)], seed=seed + 1)
    g = OpGraph(4, 4, 4)
    a = g.signed_layer()
    if op == "Conv":
        model = conv_classifier(g, a, weight, bias, pads=[1, 1, 1, 1], strides=[2, 2])
        return weight, model, conv_forward([1, 1, 1, 1], strides=(2, 2)), [3, 2, 2]
    return weight, gemm_classifier(g, a, weight, bias), linear, [CLASSES]


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_alphabeta(op):
    weight, model, forward, y_shape = signed_linear_case(op, seed=1)
    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=3), int(np.prod(y_shape)))
    out = explain(model, x, targets, composite={op: {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}})

    expected = alphabeta_rule(forward, f64(x), f64(weight), relevance_at_output(targets, y_shape), 2.0, 1.0)
    assert_matches(out.relevance(), expected)


def test_zplus_on_signed_inputs_by_hand():
    """z+ splits a signed input: z = W+ x+ + W- x-, so a negative input counts through its negative weights only.
    x = (2, -1); class 0 weighs (3, -2): z = 2*3 + (-1)(-2) = 8, R = (6/8, 2/8); class 1 weighs (-1, -4): only
    (-1)(-4) = 4 counts, R = (0, 1). (W+ x would give (1, 0) and (0, 0); |W| |x| would give class 1 (1/3, 2/3).)
    The bias, which z+ ignores, is large enough to change any share it entered."""
    g = OpGraph(1, 1, 2)  # a 1 x 2 grid: a 1 x 1 one is no layer
    model = gemm_classifier(g, g.signed_layer(), np.array([[3, -2], [-1, -4]], np.float32),
                            np.array([5, -7], np.float32))
    x = np.array([2, -1], np.float32).reshape(1, 1, 1, 2).repeat(2, axis=0)
    out = explain(model, x, np.array([0, 1]), composite={"Gemm": "zplus"})
    np.testing.assert_allclose(out.relevance().reshape(2, 2), [[0.75, 0.25], [0.0, 1.0]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_zplus_on_signed_inputs(op):
    """z+ over a signed layer (a strided, padded Conv and a Gemm, both with a bias that z+ ignores), for every
    output unit, against reference.zplus_rule; that its x- W- half changes the answer here is checked too."""
    weight, model, forward, y_shape = signed_linear_case(op, seed=51)
    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=53), int(np.prod(y_shape)))
    assert (x < 0).any() and (x > 0).any()
    out = explain(model, x, targets, composite={op: "zplus"})

    at_output = relevance_at_output(targets, y_shape)
    expected = zplus_rule(forward, f64(x), f64(weight), at_output)
    assert_matches(out.relevance(), expected)
    positive_half_only = zplus_rule(forward, f64(x).clamp(min=0), f64(weight), at_output)
    assert (expected - positive_half_only).abs().max() > 0.1 * expected.abs().max()


# Bounds of the zbox case: per channel for the Conv's image-like input, one pair for the Gemm's flattened one.
BOUNDS = {"Conv": ([-1.5, -1.0, -2.0, -0.5], [1.5, 2.0, 1.0, 2.5]), "Gemm": (-2.0, 2.0)}
SPECS = {"gamma": {"rule": "gamma", "gamma": 0.25}, "flat": "flat", "wsquare": "wsquare"}


@pytest.mark.parametrize("rule", ["gamma", "zbox", "flat", "wsquare"])
@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_gamma_and_input_rules(op, rule):
    """gamma on signed inputs, zbox with the input's bounds, flat and wsquare, each against its formula in
    reference.py, for every output unit of a strided, padded Conv and of a Gemm."""
    weight, model, forward, y_shape = signed_linear_case(op, seed=41)
    low, high = BOUNDS[op]
    samples = np.clip(random_samples([2, 4, 4, 4], seed=43, scale=1.5),
                      np.reshape(low, [1, -1, 1, 1]), np.reshape(high, [1, -1, 1, 1])).astype(np.float32)
    x, targets = per_unit_batch(samples, int(np.prod(y_shape)))
    spec = {"rule": "zbox", "low": low, "high": high} if rule == "zbox" else SPECS[rule]
    out = explain(model, x, targets, composite={op: spec})

    at_output, w = relevance_at_output(targets, y_shape), f64(weight)
    expected = {"gamma": lambda: gamma_rule(forward, f64(x), w, at_output, 0.25),
                "zbox": lambda: zbox_rule(forward, f64(x), w, at_output, low, high),
                "flat": lambda: connectivity_rule(forward, f64(x), torch.ones_like(w), at_output),
                "wsquare": lambda: connectivity_rule(forward, f64(x), w**2, at_output)}[rule]()
    assert_matches(out.relevance(), expected)
    if rule in ("flat", "wsquare"):  # they ignore the input: every sample gets the same relevance per unit
        first, second = np.split(out.relevance(), 2)  # sample 0's units, then sample 1's
        np.testing.assert_allclose(first, second, rtol=1e-6)


def test_epsilon_from_json_file(tmp_path):
    """A composite file given by path; eps = 0.5 is large enough to matter: R_in = x * W^T (R / (z + 0.5 sign z)),
    z = W x + b with the bias, through a Gemm and then a Conv (the Conv receives dense relevance)."""
    weight, conv_bias = weights([3, 4, 3, 3], seed=4), weights([3], seed=5)
    matrix, gemm_bias = weights([CLASSES, 3 * 4 * 4], seed=6), weights([CLASSES], seed=7)
    g = OpGraph(4, 4, 4)
    conv = g.node("Conv", [g.signed_layer(), g.const(weight), g.const(conv_bias)], pads=[1, 1, 1, 1])
    flat = g.node("Flatten", [conv], axis=1)
    model = g.model(g.node("Gemm", [flat, g.const(matrix), g.const(gemm_bias)], out="logits", transB=1))
    path = tmp_path / "large_epsilon.json"
    path.write_text(json.dumps({"Conv": {"rule": "epsilon", "eps": 0.5}, "Gemm": {"rule": "epsilon", "eps": 0.5}}))

    x, targets = per_unit_batch(random_samples([2, 4, 4, 4], seed=8), CLASSES)
    out = explain(model, x, targets, composite=str(path))

    def conv(v):
        return F.conv2d(v, f64(weight), f64(conv_bias), padding=1)

    hidden = conv(f64(x))
    at_hidden = proportional_rule(lambda v: F.linear(v.flatten(1), f64(matrix), f64(gemm_bias)), [hidden],
                                  onehot(targets, CLASSES), eps=0.5)[0]
    assert_matches(out.relevance(), proportional_rule(conv, [f64(x)], at_hidden, eps=0.5)[0])


def test_norm_on_conv_excludes_bias():
    """norm divides by z = W x without the bias (stabilised by 1e-6). Signed weights can make z cancel to almost 0,
    where no fp32 implementation matches float64, so only units with |z| >= 1% of sum |W| |x| are explained."""
    weight, bias = weights([3, 4, 3, 3], seed=9), weights([3], seed=10, scale=2.0)
    g = OpGraph(4, 4, 4)
    model = conv_classifier(g, g.relu_layer(), weight, bias, pads=[1, 1, 1, 1])
    samples = F.relu(f64(random_samples([2, 4, 4, 4], seed=11)))
    forward = conv_forward([1, 1, 1, 1])
    with torch.no_grad():
        z = forward(samples, f64(weight))
        well_conditioned = z.abs() >= 0.01 * forward(samples, f64(weight).abs())
    x, targets = per_unit_batch(samples.float().numpy(), 3 * 4 * 4, keep=well_conditioned.flatten(1).numpy())
    out = explain(model, x, targets, composite={"Conv": "norm"})

    expected = proportional_rule(lambda v: forward(v, f64(weight)), [f64(x)], relevance_at_output(targets, [3, 4, 4]),
                                 eps=1e-6)[0]
    assert_matches(out.relevance(), expected)


# ---------------------------------------------------------------------------------------------------------------
# pass: fine where the shapes agree, a CompositeError where they do not
# ---------------------------------------------------------------------------------------------------------------

def test_pass_through_same_shape_conv():
    g = OpGraph(4, 4, 4)
    model = conv_classifier(g, g.signed_layer(), weights([4, 4, 3, 3], seed=12), pads=[1, 1, 1, 1])
    x, targets = per_unit_batch(random_samples([1, 4, 4, 4], seed=13), 4 * 4 * 4)
    out = explain(model, x, targets, composite={"Conv": "pass"})
    assert_matches(out.relevance(), relevance_at_output(targets, [4, 4, 4]))


@pytest.mark.parametrize("op, build", [
    pytest.param("Add", lambda g, a: g.node("Add", [a, g.node("Tanh", [a])]), id="Add_of_two_activations"),
    pytest.param("MaxPool", lambda g, a: g.node("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2]), id="MaxPool"),
    pytest.param("Conv", lambda g, a: g.node("Conv", [a, g.const(weights([2, 4, 3, 3], seed=14))], pads=[1] * 4),
                 id="Conv_to_fewer_channels"),
    pytest.param("Conv", lambda g, a: g.node("Conv", [a, g.const(weights([4, 4, 3, 3], seed=14))], pads=[1] * 4,
                                             strides=[2, 2]),
                 id="strided_Conv"),
    pytest.param("GlobalAveragePool", lambda g, a: g.node("GlobalAveragePool", [a]), id="GlobalAveragePool"),
])
def test_pass_refuses_where_it_cannot_apply(op, build):
    g = OpGraph(4, 4, 4)
    model = g.classifier(build(g, g.signed_layer()))
    with pytest.raises(onnx_rcam.CompositeError, match=f"'pass'.*{op}"):
        explain(model, random_samples([1, 4, 4, 4], seed=15), np.array([0]), composite={op: "pass"})


# ---------------------------------------------------------------------------------------------------------------
# Unknown names and bad parameters
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_conv_model():
    g = OpGraph(2, 3, 3)
    return conv_classifier(g, g.signed_layer(), weights([2, 2, 1, 1], seed=16))


def test_unknown_composite_lists_known_ones(small_conv_model):
    with pytest.raises(onnx_rcam.CompositeError) as error:
        onnx_rcam.augment(small_conv_model, layers=["a"], composite="no_such_composite")
    assert "no_such_composite" in str(error.value)
    assert "rcam" in str(error.value) and "epsilon_plus" in str(error.value)


def test_missing_composite_file(small_conv_model, tmp_path):
    with pytest.raises(onnx_rcam.CompositeError, match="cannot read composite file"):
        onnx_rcam.augment(small_conv_model, layers=["a"], composite=str(tmp_path / "absent.json"))


def test_unknown_rule_lists_known_ones(small_conv_model):
    with pytest.raises(onnx_rcam.CompositeError) as error:
        explain(small_conv_model, random_samples([1, 2, 3, 3], seed=17), np.array([0]), composite={"Conv": "zplusplus"})
    assert "zplusplus" in str(error.value)
    for name in ("zplus", "epsilon", "alphabeta", "norm", "pass", "gradient"):
        assert name in RULES and name in str(error.value)


@pytest.mark.parametrize("spec, message", [
    ({"rule": "epsilon", "gamma": 0.25}, "epsilon"),
    ({"rule": "alphabeta", "alpha": 1.0, "beta": 1.0}, "alpha - beta = 1"),
    ({"eps": 0.25}, "unknown rule"),
], ids=["unknown_parameter", "alpha_minus_beta_not_1", "no_rule_name"])
def test_bad_rule_spec(spec, message):
    with pytest.raises(onnx_rcam.CompositeError, match=message):
        Composite("mine", {"Conv": spec})


# ---------------------------------------------------------------------------------------------------------------
# Conservation and the gradient rule
# ---------------------------------------------------------------------------------------------------------------

# id: (ONNX node builder on (graph, a), composite, number of logits): all bias-free, fed strictly positive inputs.
CONSERVING = {
    "zplus_Conv": (lambda g, a: g.node("Conv", [a, g.const(weights([4, 2, 3, 3], seed=18))], pads=[1, 1, 1, 1],
                                       strides=[2, 2], group=2), {"Conv": "zplus"}, 4 * 3 * 3),
    "zplus_Gemm": (lambda g, a: g.node("Gemm", [g.node("Flatten", [a]), g.const(weights([CLASSES, 100], seed=19))],
                                       transB=1), {"Gemm": "zplus"}, CLASSES),
    "norm_AveragePool": (lambda g, a: g.node("AveragePool", [a], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1]), "rcam", 4 * 3 * 3),
    "norm_GlobalAveragePool": (lambda g, a: g.node("GlobalAveragePool", [a]), "rcam", 4),
}


@pytest.mark.parametrize("case", CONSERVING)
def test_conservation(case):
    """On strictly positive inputs every z of these rules is a positive sum, so each output's relevance reaches the
    inputs whole: the relevance at a sums to the logit's, 1 under onehot."""
    build, composite, classes = CONSERVING[case]
    g = OpGraph(4, 5, 5)
    model = g.classifier(build(g, g.relu_layer()))
    x, targets = per_unit_batch(random_samples([2, 4, 5, 5], seed=20, positive=True), classes)
    out = explain(model, x, targets, composite=composite)
    np.testing.assert_allclose(out.relevance().sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("rule", [{"rule": "zplus"}, {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}])
def test_one_sign_denominator_of_zero(rule):
    """Where every term of z+ (or of alpha-beta's two sums) is 0 but the unit's relevance is not (its bias makes y
    non-zero), the input's relevance is exactly 0: the TINY offset in the generated Conv's bias must neither leak
    relevance nor overflow. Units elsewhere match the formula."""
    weight, bias = weights([3, 4, 3, 3], seed=30), weights([3], seed=31, scale=2.0)
    g = OpGraph(4, 6, 6)
    model = conv_classifier(g, g.relu_layer(), weight, bias, pads=[1, 1, 1, 1])
    samples = random_samples([1, 4, 6, 6], seed=32, positive=True)
    samples[:, :, :4, :4] = 0  # the windows of units (0..2, 0..2) see only zeros and padding
    x, targets = per_unit_batch(samples, 3 * 6 * 6)
    out = explain(model, x, targets, composite={"Conv": rule})

    relevance = out.relevance()
    dead = np.zeros([3, 6, 6], bool)
    dead[:, :3, :3] = True
    assert np.isfinite(relevance).all()
    assert not relevance[dead.flatten()[targets]].any()
    at_output, forward = relevance_at_output(targets, [3, 6, 6]), conv_forward([1, 1, 1, 1])
    if rule["rule"] == "zplus":
        expected = zplus_rule(forward, f64(x), f64(weight), at_output)
    else:
        expected = alphabeta_rule(forward, f64(x), f64(weight), at_output, 2.0, 1.0)
    assert_matches(relevance, expected)


def test_gradient_rule_is_the_chain_rule():
    """{"*": "gradient"} through a strided Conv, LeakyRelu, MaxPool, AveragePool, a join, a broadcast join with a
    GlobalAveragePool and a Gemm equals the autograd gradient of the logit."""
    weight, conv_bias = weights([4, 4, 3, 3], seed=21), weights([4], seed=22)
    matrix, gemm_bias = weights([CLASSES, 16], seed=23), weights([CLASSES], seed=24)
    g = OpGraph(4, 8, 8)
    conv = g.node("Conv", [g.signed_layer(), g.const(weight), g.const(conv_bias)], pads=[1, 1, 1, 1], strides=[2, 2])
    hidden = g.node("LeakyRelu", [conv], alpha=0.1)  # not Relu: its zeros would tie in the max pool
    joined = g.node("Add", [g.node("MaxPool", [hidden], kernel_shape=[2, 2], strides=[2, 2]),
                            g.node("AveragePool", [hidden], kernel_shape=[2, 2], strides=[2, 2])])
    broadcast = g.node("Add", [joined, g.node("GlobalAveragePool", [joined])])
    model = g.model(g.node("Gemm", [g.node("Flatten", [broadcast]), g.const(matrix), g.const(gemm_bias)],
                           out="logits", transB=1))

    def network(v):
        h = F.leaky_relu(F.conv2d(v, f64(weight), f64(conv_bias), stride=2, padding=1), 0.1)
        j = F.max_pool2d(h, 2, 2) + F.avg_pool2d(h, 2, 2)
        return F.linear((j + j.mean(dim=(2, 3), keepdim=True)).flatten(1), f64(matrix), f64(gemm_bias))

    x, targets = per_unit_batch(random_samples([3, 4, 8, 8], seed=25), CLASSES)
    out = explain(model, x, targets, composite={"*": "gradient"})
    logits, gradient = torch.autograd.functional.vjp(network, f64(x), onehot(targets, CLASSES))
    assert_matches(out.output, logits, "forward")
    assert_matches(out.relevance(), gradient)
