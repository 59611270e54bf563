"""Shared fixtures: models exported once per session, and a runner for augmented models in onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

# The full-size models (VGG16: ~90 s a case) run in CI (CI=true) or on request (RCAM_FULL=1); 1/8 width always.
FULL_SIZE = os.environ.get("RCAM_FULL") == "1" or os.environ.get("CI") == "true"


def run_model(model: onnx.ModelProto | str, feeds: dict, providers=("CPUExecutionProvider",)) -> dict:
    """Run a model in onnxruntime and return every output by name."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the rcam/target initializer-as-input warning is expected
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=list(providers))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str = "") -> float:
    """DESIGN.md section 4: max|ours - ref| <= 1e-4 * max|ref| + 1e-7; returns the deviation relative to max|ref|."""
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    deviation = float(np.max(np.abs(ours.astype(np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    assert deviation <= 1e-4 * scale + 1e-7, f"{what}: max deviation {deviation:.3g} vs max|ref| {scale:.3g}"
    return deviation / scale if scale else deviation


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")
