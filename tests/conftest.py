"""Shared fixtures: models exported once per session, a runner for augmented models in onnxruntime, and the
measured numbers (largest deviations from the reference, deployed forms' drift), printed after the run
(pytest_terminal_summary) for the issue notes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `python -m pytest` puts the current folder first on sys.path. From the repository root, its onnx_rcam/ folder
# (without rules/, models/ and the console, which install inside the package) would shadow the installed package
# and fail to import. The tests import what pip installed, editable or not.
_CHECKOUT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _CHECKOUT]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

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
    """docs/design.md section 4: max|ours - ref| <= 1e-4 * max|ref| + 1e-7; returns the deviation relative to
    max|ref|."""
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite values"
    deviation = float(np.max(np.abs(ours.astype(np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    assert deviation <= 1e-4 * scale + 1e-7, f"{what}: max deviation {deviation:.3g} vs max|ref| {scale:.3g}"
    return deviation / scale if scale else deviation


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


# group -> key -> a line: the measured numbers (largest deviations from the reference, deployed forms' drift),
# printed after the run for the issue notes; a test records its own, so any subset of tests reports what it ran.
REPORTS: dict[str, dict[str, str]] = {}


def report(group: str, key: str, line: str) -> None:
    REPORTS.setdefault(group, {})[key] = line


def record_deviation(group: str, case: str, deviation: float) -> None:
    report(f"largest deviations from the reference: {group}", case, f"{case}: {deviation:.2e} of max|ref|")


def pytest_terminal_summary(terminalreporter):
    for group, lines in sorted(REPORTS.items()):
        terminalreporter.write_sep("-", group)
        for _, line in sorted(lines.items()):
            terminalreporter.write_line(f"  {line}")
