"""The bundled ImageNet EfficientNet-Lite0 on the bundled photos: depthwise convs, Clip (ReLU6), residual Adds;
against the float64 torch reference on its trained weights (tests/efficientnet_reference.py) at every stage."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import onnx_rcam
import reference
from conftest import assert_close, run_model
from efficientnet_reference import STAGES, bundled_reference
from onnx_rcam.augment import build
from onnx_rcam.models_path import models_folder, sample_images
from photos import bundled_batch

CLASSES = 1000
INITIALS = ("contrastive", "onehot")
# Above every depthwise conv, z+ conserves; `_blocks.10` and below are below several (test_relevance_leaks_...).
CONSERVING = ["auto", "_conv_head", "_blocks.15"]
LAYERS = list(STAGES)
assert LAYERS[: len(CONSERVING)] == CONSERVING
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def photos():
    return bundled_batch()


@pytest.fixture(scope="module")
def plain_logits(photos):
    return run_model(str(onnx_rcam.default_model_path()), {"input": photos})["logits"]


@pytest.fixture(scope="module")
def augmented(photos):
    """initial -> (augmented model, output keys of LAYERS in order, outputs on the photos)."""
    results = {}
    for initial in INITIALS:
        result = build(onnx_rcam.default_model_path(), layers=LAYERS, initial=initial)
        results[initial] = result.model, [t.key for t in result.targets], run_model(result.model, {"input": photos})
    return results


@pytest.fixture(scope="module", params=INITIALS)
def explained(request, augmented):
    """(initial, augmented model, output keys of LAYERS in order, outputs on the photos)."""
    return request.param, *augmented[request.param]


def test_bundled_files_are_intact():
    path = onnx_rcam.default_model_path()
    recorded = (models_folder() / "efficientnet_lite0.onnx.sha256").read_text().split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded
    assert len(sample_images()) >= 4


def test_predicts_the_photos(plain_logits):
    """The weights are real: the cat is a cat (tabby, tiger or Egyptian cat) and the coffee an espresso."""
    predicted = dict(zip((p.stem for p in sample_images()), plain_logits.argmax(1)))
    assert predicted["chelsea"] in (281, 282, 285)
    assert predicted["coffee"] == 967


def test_augmented_model_passes_the_full_check(explained):
    onnx.checker.check_model(explained[1], full_check=True)


def test_auto_is_the_last_activation_before_pooling(explained):
    """Keyed `auto` (docs/design.md section 2); the chosen tensor is in the model's metadata."""
    assert explained[2][0] == "auto"
    recorded = {e.key: json.loads(e.value) for e in explained[1].metadata_props}["rcam/layers"]
    assert list(recorded) == explained[2] and recorded["auto"] == "/_swish_1/Clip_output_0"


def test_original_logits_bit_for_bit(explained, plain_logits):
    out = explained[3]
    np.testing.assert_array_equal(out["logits"], plain_logits)
    np.testing.assert_array_equal(out["rcam/class"], plain_logits.argmax(1))


def test_maps_are_the_head_of_the_models_own_relevance(explained, photos):
    """Each raw map is sum_k mean_hw(R_k) A_k and each map its per-sample min-max, bilinear to 224 x 224, computed
    here in float64 from the file's own relevance and activation outputs (the head alone, whatever the sweep did)."""
    _, _, keys, out = explained
    for layer in keys:
        heat = out[f"rcam/{layer}/map"]
        assert heat.shape == (len(photos), 224, 224)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        raw, expected = reference.rcam_maps(*(torch.from_numpy(out[f"rcam/{layer}/{part}"]).double()
                                              for part in ("activation", "relevance")), (224, 224))
        assert_close(out[f"rcam/{layer}/raw"], raw.numpy(), f"{layer} raw")
        assert_close(heat, expected.numpy(), f"{layer} map")


def test_matches_the_float64_reference_at_every_stage(explained):
    """The trained weights against reference.py (float64, its own z+, pooling and join rules, hooked onto the same
    weights in torch): the explained classes, then the activation, relevance, raw map and map at each stage, each
    within docs/design.md's 1e-4 of max|ref| (conftest.assert_close), for contrastive and onehot initial relevance.

    Largest deviations measured (max|ours - ref| / max|ref| over relevance, raw and map), and what fp32 rounding
    alone moves the reference by (reference.fp32_deviation, float32 torch with subnormals flushed):
      contrastive: auto 3.6e-6 (fp32 alone 4.3e-6), _conv_head 3.6e-6 (4.3e-6), _blocks.15 3.3e-6 (3.2e-6),
                   _blocks.10 7.5e-5 (9.7e-5), _blocks.4 4.9e-5 (5.5e-5), _blocks.2 4.6e-5 (5.9e-5);
      onehot:      auto 3.2e-6 (3.8e-6), _conv_head 3.2e-6 (3.8e-6), _blocks.15 2.0e-6 (2.4e-6),
                   _blocks.10 5.9e-5 (7.8e-5), _blocks.4 2.3e-5 (3.0e-5), _blocks.2 2.1e-5 (2.8e-5).
    Below the depthwise convs every deviation is fp32 rounding's own size, not a rule's: the relevance there is what
    is left after z+ dropped 78-93% of it (test_relevance_leaks_...), a small remainder of large terms, and
    contrastive's is moreover the difference of the explained class's and the other classes' (its sums are ~1e-3 of
    onehot's). At contrastive `_blocks.10` fp32 rounding alone reaches 0.97 of the tolerance: the case is
    comparable but has no margin, and another runtime's or machine's fp32 rounding could exceed the tolerance there
    without any rule being wrong. The tolerance is not widened for it: a failure of that one case by about the
    tolerance, with the maps and the other layers in tolerance, calls for reference.fp32_deviation before a fix.
    """
    initial, _, keys, out = explained
    ref = bundled_reference(initial)
    np.testing.assert_array_equal(out["rcam/class"], ref.classes)
    np.testing.assert_allclose(out["logits"], ref.logits, atol=1e-4 * np.abs(ref.logits).max())
    for layer in keys:
        assert_close(out[f"rcam/{layer}/activation"], ref.activations[layer], f"{initial} {layer} activation")
        for part, expected in (("relevance", ref.relevance), ("raw", ref.raw), ("map", ref.maps)):
            assert_close(out[f"rcam/{layer}/{part}"], expected[layer], f"{initial} {layer} {part}")


def test_relevance_is_conserved_above_the_depthwise_convs(explained):
    """The sum over a layer equals the initial relevance's sum: 1 (onehot) or 1/K (contrastive).

    Contrastive's 1/K is a difference of two sums of magnitude ~1, so fp32 rounding alone moves it by ~1e-7, i.e.
    ~1e-4 of 1/K (1.35e-4 measured at worst on the photos); it is held to 1e-4 of the initial relevance's mass.
    """
    initial, _, keys, out = explained
    expected = 1.0 / CLASSES if initial == "contrastive" else 1.0
    mass = 2.0 - 2.0 / CLASSES if initial == "contrastive" else 1.0
    for key in keys[: len(CONSERVING)]:
        sums = out[f"rcam/{key}/relevance"].astype(np.float64).reshape(4, -1).sum(1)
        assert np.all(np.abs(sums - expected) <= 1e-4 * mass), (key, sums)
        if initial == "onehot":  # 1.2e-7 measured at worst (README: "to 2e-7")
            np.testing.assert_allclose(sums, 1.0, rtol=0, atol=3e-7)


# The relevance left (onehot, summed over the layer) per photo (astronaut, chelsea, coffee, rocket), as measured on
# the file and on the reference alike (to 1e-5).
KEPT = {"_blocks.10": [0.21742, 0.16144, 0.17484, 0.16325],
        "_blocks.4": [0.12730, 0.08015, 0.09165, 0.07324],
        "_blocks.2": [0.12330, 0.07730, 0.08833, 0.06940]}


def test_relevance_leaks_below_the_depthwise_convs(augmented):
    """z+ ignores biases: a depthwise 3x3 window of ReLU6 zeros has z+ = 0 while its bias makes the neuron fire,
    and the relevance it receives is dropped (docs/design.md's rule, not a bug). Pinned per photo, and the README's
    claim (Limits: "78-84% of the relevance is gone by `_blocks.10`") is the measured range, rounded outwards to
    whole percents: 78.3-83.9% lost at `_blocks.10`, 87.3-92.7% at `_blocks.4`, 87.7-93.1% at `_blocks.2`."""
    out = augmented["onehot"][2]
    kept = {layer: out[f"rcam/{layer}/relevance"].astype(np.float64).reshape(4, -1).sum(1) for layer in KEPT}
    for layer, expected in KEPT.items():
        np.testing.assert_allclose(kept[layer], expected, atol=2e-5, err_msg=layer)
        np.testing.assert_allclose(kept[layer], bundled_reference("onehot").relevance[layer].astype(np.float64)
                                   .reshape(4, -1).sum(1), atol=1e-5, err_msg=layer)
    claim = re.search(r"(\d+)-(\d+)% of the relevance is gone by `_blocks\.10`", " ".join(README.read_text().split()))
    assert claim, "the README's figure for `_blocks.10` is gone or reworded"
    lost = 100 * (1 - kept["_blocks.10"])
    assert (int(claim[1]), int(claim[2])) == (math.floor(lost.min()), math.ceil(lost.max())), lost
