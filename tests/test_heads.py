"""The CAM heads against the reference: Relevance-CAM (test_models.py covers it at depth) and the Grad-CAM family,
whose gradient comes from the second, chain-rule sweep and is checked against plain torch autograd.

One augmented file holds every method: each method's gradient (or relevance), raw map and map per layer, the original
logits bit for bit, and a different class per sample through rcam/target.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

import families
import onnx_rcam
import reference
import zoo
from conftest import assert_close, run_model
from onnx_rcam.errors import RcamError
from onnx_rcam.heads import METHODS

GRADIENT_METHODS = [name for name, method in METHODS.items() if method.signal == "gradient"]
# The maps from the relevance besides Relevance-CAM itself: lrp and the issue-15 candidates.
RELEVANCE_MAPS = [name for name, method in METHODS.items() if method.signal == "relevance" and name != "rcam"]
BATCH = 4

# name -> (builder, layers, input size, exporter): residual joins and max-pool routing (ResNet18); gates, hard-swish
# and squeeze-excitation products, whose gradient takes the product rule (MobileNetV3), with the other exporter.
CASES = {
    "resnet18": (lambda: zoo.randomize(zoo.resnet18(0.125, num_classes=20), seed=5), ["layer1", "layer3", "layer4"],
                 64, "torchscript"),
    "mobilenet_v3": (lambda: families.randomize(families.MobileNetV3(), seed=9), ["features.1", "features.3",
                                                                                 "features.6"], 96, "dynamo"),
}


@functools.cache
def case(name: str, export_dir):
    build, layers, size, exporter = CASES[name]
    model = build()
    path = zoo.export(model, export_dir / f"heads-{name}.onnx", exporter, input_shape=(1, 3, size, size))
    x, targets, classes = reference.well_conditioned_batch(model, layers, BATCH, size, seed=3)
    augmented = onnx_rcam.augment(path, layers=layers, methods=["rcam", *RELEVANCE_MAPS, *GRADIENT_METHODS])
    onnx.checker.check_model(augmented, full_check=True)
    out = run_model(augmented, {"input": x, "rcam/target": targets})
    return model, path, layers, size, x, classes, out


@pytest.mark.parametrize("name", CASES)
def test_gradient_methods_match_autograd(name, export_dir):
    """The gradient at each layer, and each method's raw map and map, against autograd and the papers' formulas.

    MobileNetV3's layers are signed, where Grad-CAM++'s denominator 2 + S_k G comes within 0.006 of 0 (its formula
    assumes ReLU outputs): the head computes it in float64; in fp32 its raw map was 1.6e-4 of its maximum off.
    """
    model, path, layers, size, x, classes, out = case(name, export_dir)
    assert np.array_equal(out["logits"], run_model(str(path), {"input": x})["logits"]), "original logits changed"
    np.testing.assert_array_equal(out["rcam/class"], classes)
    activations, grads = reference.gradients(model, x, layers, classes)
    for layer in layers:
        cams = reference.gradient_cams(activations[layer], grads[layer], (size, size))
        for method in GRADIENT_METHODS:
            assert_close(out[f"{method}/{layer}/activation"], activations[layer].float().numpy(),
                         f"{method} {layer} activation")
            assert_close(out[f"{method}/{layer}/gradient"], grads[layer].numpy(), f"{method} {layer} gradient")
            raw, cam = cams[method]
            assert_close(out[f"{method}/{layer}/raw"], raw.numpy(), f"{method} {layer} raw")
            assert_close(out[f"{method}/{layer}/map"], cam.numpy(), f"{method} {layer} map")
            assert out[f"{method}/{layer}/map"].shape == (BATCH, size, size)


@pytest.mark.parametrize("name", CASES)
def test_relevance_methods_beside_the_gradient_methods(name, export_dir):
    """The chain-rule sweep in the same file leaves Relevance-CAM as it is alone; the other relevance maps (the LRP
    heatmap, lrp-pos, rcam-pos, rcam-elem) are their formulas over the float64 reference's relevance and activation
    (reference.relevance_cams), each method's relevance output the reference's relevance."""
    model, path, layers, size, x, classes, out = case(name, export_dir)
    ref = reference.reference(model, x, layers, targets=classes)
    for layer in layers:
        assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance")
        assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map")
        A, R = (torch.as_tensor(t).double() for t in (ref.activations[layer], ref.relevance[layer]))
        for method, (raw, cam) in reference.relevance_cams(A, R, (size, size)).items():
            assert_close(out[f"{method}/{layer}/relevance"], ref.relevance[layer], f"{method} {layer} relevance")
            assert_close(out[f"{method}/{layer}/raw"], raw.numpy(), f"{method} {layer} raw")
            assert_close(out[f"{method}/{layer}/map"], cam.numpy(), f"{method} {layer} map")
    assert not any(n.startswith("rcam/") and n.endswith("/gradient") for n in out)


def test_methods_are_distinct(export_dir):
    """Each method's map is its own (all ten of METHODS: rcam, the four other relevance maps and the five Grad-CAM
    methods): it matches its own formula's reference, and every two methods' references are far apart on this
    batch, so an output wired to another method's tensor would fail (the closest two, rcam and rcam-pos, differ by
    0.025, 250 times the tolerance)."""
    model, _, layers, size, x, classes, out = case("resnet18", export_dir)
    layer = layers[0]
    activations, grads = reference.gradients(model, x, [layer], classes)
    expected = {name: cam.numpy() for name, (_, cam) in
                reference.gradient_cams(activations[layer], grads[layer], (size, size)).items()}
    ref = reference.reference(model, x, [layer], targets=classes)
    expected["rcam"] = ref.maps[layer]
    A, R = (torch.as_tensor(t).double() for t in (ref.activations[layer], ref.relevance[layer]))
    expected.update({name: cam.numpy() for name, (_, cam) in reference.relevance_cams(A, R, (size, size)).items()})
    assert sorted(expected) == sorted(METHODS) and len(METHODS) == 10
    for method in METHODS:
        assert_close(out[f"{method}/{layer}/map"], expected[method], f"{method} map")
        for other in METHODS:
            gap = np.abs(expected[method] - expected[other]).max()
            assert other == method or gap > 0.01, f"{method} and {other} maps differ by {gap:.3g} only"


def test_gradient_method_with_top_k(export_dir):
    """top_k = 2: the second class's Grad-CAM is the Grad-CAM of the runner-up."""
    model, path, layers, size, x, _, _ = case("resnet18", export_dir)
    out = run_model(onnx_rcam.augment(path, layers=[layers[-1]], methods=["gradcam"], top_k=2), {"input": x})
    second = out["rcam/class"][:, 1]
    activations, grads = reference.gradients(model, x, [layers[-1]], second)
    raw, cam = reference.gradient_cams(activations[layers[-1]], grads[layers[-1]], (size, size))["gradcam"]
    assert out[f"gradcam/{layers[-1]}/map"].shape == (BATCH, 2, size, size)
    assert_close(out[f"gradcam/{layers[-1]}/gradient"][:, 1], grads[layers[-1]].numpy(), "runner-up gradient")
    assert_close(out[f"gradcam/{layers[-1]}/map"][:, 1], cam.numpy(), "runner-up map")


def test_only_the_methods_asked_for(export_dir):
    _, path, layers, _, _, _, _ = case("resnet18", export_dir)
    augmented = onnx_rcam.augment(path, layers=["layer4"], methods=["layercam"])
    names = {o.name for o in augmented.graph.output}
    assert {n for n in names if n.endswith("/map")} == {"layercam/layer4/map"}
    assert "layercam/layer4/gradient" in names and "rcam/class" in names


@pytest.mark.parametrize("methods, message", [(["gradcam", "scorecam++"], "unknown method 'scorecam++'"),
                                              ([], "no method given")])
def test_bad_methods_are_refused(export_dir, methods, message):
    _, path, _, _, _, _, _ = case("resnet18", export_dir)
    with pytest.raises(RcamError, match=message.replace("+", r"\+")):
        onnx_rcam.augment(path, methods=methods)


TRANSFORMERS = {  # builder, layers at every depth, the reference's grid (see reference.patch_image)
    "vit": (families.VisionTransformer, ["blocks.0.norm1", "blocks.1.norm1", "blocks.1.act", "blocks.2.norm1"],
            (1, 4, 4)),
    "swin": (families.SwinTransformer, ["layers.0.0.norm1", "layers.0.1.norm1", "layers.0.1.act",
                                        "layers.1.0.norm2", "layers.1.1.norm1"], (0, 8, 8, True)),
    "swin_tokens": (families.swin_tokens, ["layers.0.1.norm1", "layers.1.0.norm1", "layers.1.1.norm1"], (0, 8, 8)),
}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_gradient_methods_on_token_layers_match_autograd(name, exporter, export_dir):
    """Transformers' token and channels-last layers at every depth: the gradient, as the image of the patches (the
    class token dropped), and each Grad-CAM method's raw map and map, against plain autograd. The layers are
    normalised ones (and an MLP's hidden layer), as pytorch-grad-cam advises for ViTs: every path from the residual
    stream to the class score passes a LayerNorm, so the gradient there sums to 0 over the channels, and
    sum_k G_k A_k cancels to 1e-5 of its terms, beyond what fp32 can compare."""
    build, layers, grid = TRANSFORMERS[name]
    model, size = families.randomize(build(), seed=11), 32
    path = zoo.export(model, export_dir / f"heads-{name}-{exporter}.onnx", exporter, input_shape=(1, 3, size, size))
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(12)).numpy()
    targets = np.array([3, 17, -1, 5], dtype=np.int64)
    out = run_model(onnx_rcam.augment(path, layers=layers, methods=GRADIENT_METHODS), {"input": x,
                                                                                      "rcam/target": targets})
    activations, grads = reference.gradients(model, x, layers, out["rcam/class"])
    for layer in layers:
        activation, gradient = (reference.patch_image(t, grid) for t in (activations[layer], grads[layer]))
        for method in GRADIENT_METHODS:
            assert_close(out[f"{method}/{layer}/activation"], activation.float().numpy(), f"{method} {layer} A")
            assert_close(out[f"{method}/{layer}/gradient"], gradient.numpy(), f"{method} {layer} gradient")
            # The maps from our own A and G, in float64: a LayerNorm's output sums to about 0 over the patches,
            # and XGrad-CAM divides by that sum, which amplifies fp32 rounding of A and G beyond comparison.
            raw, cam = reference.gradient_cams(*(torch.from_numpy(out[f"{method}/{layer}/{part}"]).double()
                                                 for part in ("activation", "gradient")), (size, size))[method]
            assert_close(out[f"{method}/{layer}/raw"], raw.numpy(), f"{method} {layer} raw")
            assert_close(out[f"{method}/{layer}/map"], cam.numpy(), f"{method} {layer} map")


@pytest.mark.parametrize("top_k", [1, 2])
def test_fused_maps_are_the_normalised_mean_of_the_layers_maps(export_dir, top_k):
    """fuse: METHOD/fused/map is the per-map min-max of the mean of the layers' maps (numpy, from the same run's
    map outputs), for a relevance and a gradient method, per class with top-k."""
    _, path, layers, size, x, _, _ = case("resnet18", export_dir)
    methods = ["rcam-elem", "layercam"]
    fused = run_model(onnx_rcam.augment(path, layers=layers, methods=methods, fuse=True, top_k=top_k), {"input": x})
    for method in methods:
        mean = np.mean([fused[f"{method}/{layer}/map"].astype(np.float64) for layer in layers], axis=0)
        low, high = mean.min(axis=(-2, -1), keepdims=True), mean.max(axis=(-2, -1), keepdims=True)
        expected = (mean - low) / (high - low)
        assert fused[f"{method}/fused/map"].shape == (BATCH, *([top_k] if top_k > 1 else []), size, size)
        np.testing.assert_allclose(fused[f"{method}/fused/map"], expected, atol=1e-6, err_msg=method)
        assert np.abs(expected - fused[f"{method}/{layers[-1]}/map"]).max() > 0.05  # not one layer's map alone


def test_fusing_needs_two_layers(export_dir):
    _, path, _, _, _, _, _ = case("resnet18", export_dir)
    with pytest.raises(RcamError, match="two or more layers"):
        onnx_rcam.augment(path, layers=["layer4"], fuse=True)
