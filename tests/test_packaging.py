"""The wheel installs one top-level package, with rules, the bundled model and the CLI inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("onnx_rcam-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"onnx_rcam", wheel.name.split("-py")[0] + ".dist-info"}
    for required in ("onnx_rcam/console/cli.py", "onnx_rcam/rules/zplus.py", "onnx_rcam/propagators/linear.py",
                     "onnx_rcam/models/efficientnet_lite0.onnx", "onnx_rcam/models/NOTICE",
                     "onnx_rcam/models/images/chelsea.jpg", "onnx_rcam/models/images/LICENSES.md"):
        assert required in names, required
    assert not [n for n in names if "/tests/" in n or n.endswith("conftest.py")]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "onnx-rcam = onnx_rcam.console.cli:run" in entry_points
