"""Peak resident memory of one configuration, run by speed.py in a fresh process so that the peak is its own.

    python benchmarks/memory_probe.py onnxruntime MODEL.onnx --batch 8 --threads 2
    python benchmarks/memory_probe.py torch resnet50 --width 1 --layer layer2 --layer layer4 --batch 8 --threads 2

Reads the process's resident memory after the imports, then creates the session (or builds and prepares the torch
model) and runs one batch, and prints one JSON line: rss_before_mib, peak_mib (VmHWM, the process's resident
peak) and added_mib (their difference: what the configuration itself costs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from configurations import IMAGE_SHAPE

HERE = Path(__file__).resolve().parent


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def resident_mib() -> float:
    return status_mib("VmRSS")


def peak_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked copy of the parent, so a child of a
    # large benchmark process would report the parent's size.
    return status_mib("VmHWM")


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, *IMAGE_SHAPE)).astype(np.float32)


def onnxruntime_run(args) -> tuple[float, float]:
    import onnxruntime as ort

    from configurations import session_options

    before = resident_mib()
    session = ort.InferenceSession(args.target, session_options(args.threads), providers=["CPUExecutionProvider"])
    session.run(None, {args.input_name: images(args.batch)})
    return before, peak_mib()


def torch_run(args) -> tuple[float, float]:
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    from configurations import SUBJECTS
    from torch_reference import PreparedReference

    torch.set_num_threads(args.threads)
    before = resident_mib()
    x = torch.from_numpy(images(args.batch))
    subject = SUBJECTS[args.target]
    prepared = PreparedReference(subject.torch_model(args.width), args.layer, x[:1], tokens=subject.tokens)
    prepared(x)
    return before, peak_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=["onnxruntime", "torch"])
    parser.add_argument("target", help="onnxruntime: the model file; torch: the model's name in configurations.py")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--input-name", default="input")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--layer", action="append", default=[])
    args = parser.parse_args()
    before, peak = (onnxruntime_run if args.runtime == "onnxruntime" else torch_run)(args)
    print(json.dumps({"rss_before_mib": round(before, 1), "peak_mib": round(peak, 1),
                      "added_mib": round(peak - before, 1)}))


if __name__ == "__main__":
    main()
