"""Whole networks against the independent torch-autograd reference (docs/design.md section 4), both torch exporters.

Relevance and raw maps at several layers, maps at input resolution, a batch of 4 with a different class per sample
through rcam/target, conservation under the rcam rules, and the original logits bit for bit.
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
from conftest import FULL_SIZE, assert_close, record_deviation, run_model

SMALL = 0.125
SIZE = 224
VGG_POOLS = ["features.4", "features.9", "features.16", "features.23", "features.30"]
VGG_BN_POOLS = ["features.6", "features.13", "features.23", "features.33", "features.43"]
STAGES = ["layer1", "layer2", "layer3", "layer4"]

# name -> (builder(width), layers). Every architecture runs at 1/8 width; full width where conftest says so.
ARCHITECTURES = {
    "vgg16": (lambda width: zoo.vgg16(width), VGG_POOLS),
    "vgg16_bn": (lambda width: zoo.vgg16(width, batch_norm=True), VGG_BN_POOLS),
    "resnet18": (lambda width: zoo.resnet18(width), STAGES),
    "resnet50": (lambda width: zoo.resnet50(width), STAGES),
}
EXPORTERS = ["torchscript", "dynamo"]
# Contrastive relevance of random-weight models is mostly ill-conditioned in fp32 (a 1/K difference of 1000 large
# per-class terms: fp32 alone moves it 3e-5 to 7e-4 from float64), so most cases use onehot. Relevance is linear in
# the initial relevance, and the small ResNet18, which is well-conditioned, checks contrastive.
WIDTHS = [(name, SMALL, "contrastive" if name == "resnet18" else "onehot") for name in ARCHITECTURES]
WIDTHS += [(name, 1.0, "onehot") for name in ARCHITECTURES if FULL_SIZE]
CASES = [(name, width, initial, exporter) for name, width, initial in WIDTHS for exporter in EXPORTERS]
IDS = [f"{name}-{width:g}-{exporter}" for name, width, _, exporter in CASES]


@pytest.fixture(scope="module")
def case(request, export_dir):
    name, width, initial, exporter = request.param
    build, layers = ARCHITECTURES[name]
    model = zoo.randomize(build(width), seed=sum(map(ord, name)))
    path = zoo.export(model, export_dir / f"{name}-{width:g}-{exporter}.onnx", exporter)
    return f"{name}-{width:g}-{exporter}", model, path, layers, initial


@pytest.mark.parametrize("case", CASES, indirect=True, ids=IDS)
def test_matches_reference(case):
    name, model, path, layers, initial = case
    x, targets, expected_classes = reference.well_conditioned_batch(model, layers, 4, SIZE, seed=7,
                                                                     initial=initial)
    plain = run_model(str(path), {"input": x})["logits"]
    augmented = onnx_rcam.augment(path, layers=layers, initial=initial)
    onnx.checker.check_model(augmented, full_check=True)
    out = run_model(augmented, {"input": x, "rcam/target": targets})

    assert np.array_equal(out["logits"], plain), "original logits changed"
    np.testing.assert_array_equal(out["rcam/class"], expected_classes)

    ref = reference.reference(model, x, layers, targets=expected_classes, initial=initial)
    worst = 0.0
    for layer in layers:
        worst = max(worst,
                    assert_close(out[f"rcam/{layer}/activation"], ref.activations[layer], f"{layer} activation"),
                    assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance"),
                    assert_close(out[f"rcam/{layer}/raw"], ref.raw[layer], f"{layer} raw"),
                    assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map"))
        assert out[f"rcam/{layer}/map"].shape == (4, SIZE, SIZE)
    record_deviation("models", f"{name} ({initial})", worst)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] == SMALL and c[3] == "torchscript"], indirect=True,
                         ids=list(ARCHITECTURES))
def test_conserves_relevance(case):
    """z+ and the exact pool rule conserve: each layer holds the initial relevance's sum (1 for onehot).

    A non-negative image keeps every Conv/Linear input non-negative, so z+ only drops relevance where a neuron fires
    on its bias alone, which random images never hit. The residual joins' stabilised split loses relevance where
    a + b is within ~1e-6 of 0 (ResNets with random BatchNorm statistics do have such joins), so for ResNets only
    layer4, above every join, is held to it.
    """
    name, model, path, layers, _ = case
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11)).numpy()
    out = run_model(onnx_rcam.augment(path, layers=layers, initial="onehot"), {"input": x})
    conserving = layers if name.startswith("vgg") else ["layer4"]
    for layer in conserving:
        sums = out[f"rcam/{layer}/relevance"].astype(np.float64).reshape(2, -1).sum(1)
        np.testing.assert_allclose(sums, 1.0, rtol=1e-4, err_msg=f"{name} {layer}")


PRESETS = ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@functools.cache
def input_level_case(name: str, export_dir):
    """ResNet18 (TorchScript) and MobileNetV3 (dynamo, signed layers for gamma and alpha-beta), with photo-like
    images: pixels in [0, 1] under ImageNet normalisation, inside zbox's bounds. The batch is one on which fp32
    rounding alone moves no preset's input relevance by 2e-5 (reference.fp32_deviation): on MobileNetV3 most
    random batches move by 1e-4 to 1e-2 under alpha2-beta1, and some by 1e-3 under rcam too."""
    if name == "resnet18":
        model, size, exporter = zoo.randomize(zoo.resnet18(SMALL, num_classes=20), seed=13), 64, "torchscript"
    else:
        model, size, exporter = families.randomize(families.MobileNetV3(), seed=9), 96, "dynamo"
    path = zoo.export(model, export_dir / f"input-level-{name}.onnx", exporter, input_shape=(1, 3, size, size))
    for seed in range(17, 27):
        pixels = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(seed)).numpy()
        x = ((pixels - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)
        deviations = [reference.fp32_deviation(model, x, ["input"], composite=preset, initial="onehot")["input"]
                      for preset in PRESETS]
        if max(deviations) < 2e-5:
            return model, path, x
    raise AssertionError("no well-conditioned batch found")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3"])
def test_input_level_heatmaps(name, preset, export_dir):
    """The LRP heatmap at the image (layer `input`, method `lrp`: sum over channels of the relevance) under each
    composite preset, with its own rule for the first Conv, against the reference; Relevance-CAM under the same
    preset at a deeper layer alongside."""
    model, path, x = input_level_case(name, export_dir)
    deeper = "layer2" if name == "resnet18" else "features.3"
    augmented = onnx_rcam.augment(path, layers=["input", deeper], composite=preset, initial="onehot",
                                  methods=["lrp", "rcam"])
    out = run_model(augmented, {"input": x})
    ref = reference.propagate(model, x, ["input", deeper], out["rcam/class"], composite=preset, initial="onehot")
    relevance = ref.relevance["input"]
    raw = relevance.sum(1)
    assert_close(out["lrp/input/relevance"], relevance.numpy(), "input relevance")
    assert_close(out["lrp/input/raw"], raw.numpy(), "input heatmap")
    assert_close(out["lrp/input/map"], reference.normalized_map(raw.clamp(min=0), x.shape[2:]).numpy(), "input map")
    assert_close(out["rcam/input/relevance"], relevance.numpy(), "the same relevance under rcam's name")
    rcam_raw, rcam_map = reference.rcam_maps(ref.activations[deeper], ref.relevance[deeper], x.shape[2:])
    assert_close(out[f"rcam/{deeper}/map"], rcam_map.numpy(), f"{deeper} map")

