"""First timing: the augmented model against the plain one, same process, runs interleaved, medians.

    python benchmarks/augmented_vs_plain.py            # writes benchmarks/results.json and benchmarks/results.md

Needs the test extras (torch exports the random-weight ResNet50 of tests/zoo.py). CPU provider, default threads.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnx_rcam

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

REPEATS = 15
BATCHES = (1, 8)


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def interleaved_medians(sessions: dict[str, ort.InferenceSession], feeds: dict) -> dict[str, float]:
    """Median seconds per run; one warm-up each, then the sessions take turns so drift hits all alike."""
    times = {name: [] for name in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(REPEATS):
        for name, s in sessions.items():
            started = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def resnet50_file(folder: Path) -> Path:
    import zoo  # tests/zoo.py: torchvision-style ResNet50, random weights

    model = zoo.randomize(zoo.resnet50(), seed=0)
    return zoo.export(model, folder / "resnet50.onnx", "torchscript")


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        models = {
            "ResNet50 (random weights)": (resnet50_file(Path(folder)), "input",
                                          {"layer4": ["layer4"], "all stages": ["layer1", "layer2", "layer3",
                                                                                "layer4"]}),
            "EfficientNet-Lite0 (bundled)": (onnx_rcam.default_model_path(), "input",
                                             {"auto": ["auto"], "auto + _blocks.10 + _blocks.4":
                                              ["auto", "_blocks.10", "_blocks.4"]}),
        }
        for model_name, (path, input_name, variants) in models.items():
            sessions = {"plain": session(path)}
            sessions.update({label: session(onnx_rcam.augment(path, layers=layers))
                             for label, layers in variants.items()})
            for batch in BATCHES:
                x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
                medians = interleaved_medians(sessions, {input_name: x})
                for label, seconds in medians.items():
                    results.append({"model": model_name, "batch": batch, "variant": label,
                                    "median_ms": round(seconds * 1e3, 2),
                                    "vs_plain": round(seconds / medians["plain"], 2)})
                    print(f"{model_name:30s} batch {batch:2d}  {label:32s} {seconds * 1e3:9.1f} ms  "
                          f"{seconds / medians['plain']:5.2f}x", flush=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__,
               "provider": "CPUExecutionProvider", "repeats": REPEATS}
    (HERE / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = ["# Augmented vs plain: first timing", "",
             f"`python benchmarks/augmented_vs_plain.py`; onnxruntime {ort.__version__}, CPU provider, default "
             f"threads, {os.cpu_count()} cores; median of {REPEATS} interleaved runs after one warm-up.", "",
             "| model | batch | variant | median ms | vs plain |", "| --- | ---: | --- | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median_ms']} | {r['vs_plain']}x |"
              for r in results]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
