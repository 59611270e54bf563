"""Every common CNN family (tests/families.py) against the independent reference, with both torch exporters.

As in test_models.py: relevance, raw map and map at several layers, a batch with a different class per sample
through rcam/target, and the original logits bit for bit. The batch and the reference are computed once per family
and shared by both exporters.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import families
import onnx_rcam
import reference
import zoo
from conftest import assert_close, record_deviation, run_model
from families import FAMILIES

EXPORTERS = ["torchscript", "dynamo"]
BATCH = 4


CASES = [pytest.param(name, exporter, id=f"{name}-{exporter}") for name in FAMILIES for exporter in EXPORTERS]


@functools.cache
def model_and_reference(name: str):
    """The randomised model, a well-conditioned batch with per-sample targets, and the reference on it."""
    family = FAMILIES[name]
    model = families.randomize(family.build(), seed=sum(map(ord, name)))
    x, targets, classes = reference.well_conditioned_batch(model, family.layers, BATCH, family.size, seed=7,
                                                           tokens=family.tokens)
    return model, x, targets, reference.reference(model, x, family.layers, targets=classes, tokens=family.tokens)


@pytest.mark.parametrize("name, exporter", CASES)
def test_family_matches_reference(name, exporter, export_dir):
    family = FAMILIES[name]
    model, x, targets, ref = model_and_reference(name)
    path = zoo.export(model, export_dir / f"family-{name}-{exporter}.onnx", exporter,
                      input_shape=(1, 3, family.size, family.size))
    plain = run_model(str(path), {"input": x})["logits"]
    augmented = onnx_rcam.augment(path, layers=list(family.layers))
    out = run_model(augmented, {"input": x, "rcam/target": targets})

    assert np.array_equal(out["logits"], plain), "original logits changed"
    np.testing.assert_array_equal(out["rcam/class"], ref.classes)
    worst = assert_close(out["logits"], ref.logits, "logits")
    for layer in family.layers:
        worst = max(worst,
                    assert_close(out[f"rcam/{layer}/activation"], ref.activations[layer], f"{layer} activation"),
                    assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance"),
                    assert_close(out[f"rcam/{layer}/raw"], ref.raw[layer], f"{layer} raw"),
                    assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map"))
        assert out[f"rcam/{layer}/map"].shape == (BATCH, family.size, family.size)
    record_deviation("families", f"{name}-{exporter}", worst)

