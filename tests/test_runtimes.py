"""The augmented file runs in runtimes other than onnxruntime, with the same outputs: OpenVINO's CPU plugin.

Needs the `runtimes` extra (`pip install ".[test,runtimes]"`, as the README's test command has it); skipped without
it. OpenVINO compiles for its CPU plugin in fp32 here (INFERENCE_PRECISION_HINT f32): its default on CPUs with
bf16 units is bf16, which moves the model's own logits by 2%.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import families
import onnx_rcam
import zoo
from conftest import report, run_model
from families import FAMILIES
from photos import bundled_batch

ov = pytest.importorskip("openvino")

MAP_TOLERANCE = 1e-4  # maps are in [0, 1]
SIGNAL_TOLERANCE = 2e-4  # relevance, gradient and raw maps, relative to their largest magnitude per sample


def openvino_outputs(model: onnx.ModelProto, x: np.ndarray, folder) -> dict[str, np.ndarray]:
    path = folder / "model.onnx"
    onnx.save(model, path)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({compiled.inputs[0]: x})
    return {name: result[output] for output in compiled.outputs for name in output.get_names()}


def assert_agree(model: onnx.ModelProto, x: np.ndarray, folder, case: str) -> None:
    ours = run_model(model, {model.graph.input[0].name: x})
    theirs = openvino_outputs(model, x, folder)
    assert set(ours) <= set(theirs)
    worst = 0.0
    for name, expected in ours.items():
        got = theirs[name]
        if expected.dtype == np.int64:
            np.testing.assert_array_equal(got, expected, err_msg=name)
            continue
        if name.endswith("/map"):
            deviation = float(np.abs(got.astype(np.float64) - expected).max())
            assert deviation <= MAP_TOLERANCE, f"{name}: maps differ by {deviation:.3g}"
        else:
            flat = expected.reshape(len(expected), -1).astype(np.float64)
            scale = np.maximum(np.abs(flat).max(1), 1e-30)
            deviation = float((np.abs(got.reshape(flat.shape) - flat).max(1) / scale).max())
            assert deviation <= SIGNAL_TOLERANCE, f"{name}: differs by {deviation:.3g} of its largest value"
        worst = max(worst, deviation)
    report("OpenVINO CPU (fp32) against onnxruntime: largest deviation", case, f"{case}: {worst:.2e}")


def test_the_bundled_model_in_openvino(tmp_path):
    """The bundled EfficientNet-Lite0 at three depths, rcam and lrp. (Its Grad-CAM family can differ where an
    activation lies on ReLU6's kink at 6: the two runtimes round it to either side, and the derivative there is 0
    or 1. The families below hold the gradient methods to it.)"""
    model = onnx_rcam.augment(onnx_rcam.default_model_path(), layers=["auto", "_blocks.10", "_blocks.4"],
                              methods=["rcam", "lrp"])
    assert_agree(model, bundled_batch(), tmp_path, "bundled EfficientNet-Lite0")


@pytest.mark.parametrize("name", ["convnext", "vit", "swin", "efficientnet_v2", "densenet", "upsampling"])
def test_families_in_openvino(name, tmp_path):
    """Every method family (rcam, lrp, gradcam) on the modern and classic families, from the dynamo exporter."""
    family = FAMILIES[name]
    model = families.randomize(family.build(), seed=3)
    path = zoo.export(model, tmp_path / f"{name}.onnx", "dynamo", input_shape=(1, 3, family.size, family.size))
    augmented = onnx_rcam.augment(path, layers=list(family.layers), methods=["rcam", "lrp", "gradcam"])
    x = torch.randn(4, 3, family.size, family.size, generator=torch.Generator().manual_seed(1)).numpy()
    assert_agree(augmented, x, tmp_path, name)
