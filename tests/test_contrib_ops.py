"""onnxruntime's own fusions (deployed.py): a graph saved at ORT_ENABLE_EXTENDED explains exactly as the graph it
was optimised from. The fusions are onnxruntime's, made by onnxruntime itself here, never written by hand."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_rcam
from conftest import run_model
from opgraph import OpGraph, weights


@pytest.fixture(scope="module")
def plain_and_extended(tmp_path_factory):
    """Conv + LeakyRelu (FusedConv with activation_params), x * sigmoid(x) (QuickGelu), GELU written out (Gelu),
    Gemm + Relu (FusedGemm), Mul by 2 then MatMul (FusedMatMul with alpha 2)."""
    g = OpGraph(3, 6, 6)
    a = g.relu_layer()
    conv = g.node("Conv", [a, g.const(weights([4, 3, 3, 3], seed=1)), g.const(weights([4], seed=2))], pads=[1, 1, 1, 1])
    leaky = g.node("LeakyRelu", [conv], alpha=0.1)
    conv2 = g.node("Conv", [leaky, g.const(weights([4, 4, 1, 1], seed=7))])
    silu = g.node("Mul", [conv2, g.node("Sigmoid", [conv2])], out="silu")
    erf = g.node("Erf", [g.node("Div", [silu, g.const(np.sqrt(2.0))])])
    gelu = g.node("Mul", [g.node("Mul", [silu, g.node("Add", [erf, g.const(1.0)])]), g.const(0.5)])
    hidden = g.node("Relu", [g.node("Gemm", [g.node("Flatten", [gelu], axis=1), g.const(weights([144, 10], seed=3)),
                                             g.const(weights([10], seed=4))])])
    model = g.model(g.node("MatMul", [g.node("Mul", [hidden, g.const(2.0)]), g.const(weights([10, 7], seed=6))],
                           out="logits"))
    folder = tmp_path_factory.mktemp("contrib")
    plain, extended = folder / "plain.onnx", folder / "extended.onnx"
    onnx.save(model, plain)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(extended)
    ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
    return plain, extended


def test_onnxruntime_fuses_what_the_test_claims(plain_and_extended):
    _, extended = plain_and_extended
    fused = {n.op_type for n in onnx.load(extended).graph.node if n.domain == "com.microsoft"}
    assert {"FusedConv", "FusedGemm", "FusedMatMul", "QuickGelu", "Gelu"} <= fused, fused


@pytest.mark.parametrize("composite", ["rcam", "gradient"])
def test_extended_graph_explains_as_the_plain_one(plain_and_extended, composite):
    plain, extended = plain_and_extended
    x = np.random.default_rng(0).normal(size=(3, 3, 6, 6)).astype(np.float32)
    rules = composite if composite == "rcam" else {"*": "gradient"}
    ours = [run_model(onnx_rcam.augment(path, layers=["a", "silu"], composite=rules), {"x": x})
            for path in (plain, extended)]
    for layer in ("a", "silu"):
        expected = ours[0][f"rcam/{layer}/relevance"]
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(ours[1][f"rcam/{layer}/relevance"], expected, rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())


def test_unknown_contrib_op_is_named(plain_and_extended):
    _, extended = plain_and_extended
    model = onnx.load(extended)
    next(n for n in model.graph.node if n.op_type == "QuickGelu").op_type = "MysteryGelu"
    with pytest.raises(onnx_rcam.ModelError, match="com.microsoft:MysteryGelu"):
        onnx_rcam.augment(model, layers=["a"], verify=False)
