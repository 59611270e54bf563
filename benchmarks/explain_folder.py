"""Memory and speed of `onnx-rcam explain` over a large folder: memory must not grow with the folder.

    python benchmarks/explain_folder.py [COUNT]     # default 1000; writes benchmarks/explain_folder.{json,md}

Builds COUNT photos from the bundled ones (random crops, flips and sizes, saved as JPEG) in a temporary folder,
runs the real command in a child process on the bundled model, and samples the child's resident memory twice a
second. Flat memory means: the peak after the first 10% of the images is within a few percent of the final peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from onnx_rcam.models_path import sample_images

HERE = Path(__file__).resolve().parent
LAYERS = ["auto", "_blocks.10"]
BATCH = 16


def make_photos(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    sources = [Image.open(p).convert("RGB") for p in sample_images()]
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        crop_w, crop_h = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = rng.integers(0, w - crop_w + 1), rng.integers(0, h - crop_h + 1)
        picture = photo.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            picture = picture.transpose(Image.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.5, 1.5)
        picture.resize((max(64, int(crop_w * scale)), max(64, int(crop_h * scale)))).save(
            folder / f"photo{i:05d}.jpg", quality=90)


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        photos, out = Path(scratch) / "photos", Path(scratch) / "out"
        photos.mkdir()
        make_photos(photos, count)
        command = ["onnx-rcam", "explain", "--device", "cpu", "--batch-size", str(BATCH), "-o", str(out),
                   *[arg for layer in LAYERS for arg in ("--layer", layer)],
                   str(Path(sample_images()[0]).parents[1] / "efficientnet_lite0.onnx"), str(photos)]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = []  # (seconds, images written so far, resident MiB)
        started = time.perf_counter()
        while child.poll() is None:
            written = sum(1 for _ in out.glob("*.npz")) if out.exists() else 0
            samples.append((time.perf_counter() - started, written, resident_mib(child.pid)))
            time.sleep(0.5)
        if child.returncode != 0:
            raise SystemExit(f"explain failed with status {child.returncode}")
        summary = json.loads((out / "summary.json").read_text())

    def peak_until(fraction: float) -> float:
        return max(rss for _, done, rss in samples if done <= fraction * count)

    result = {"images": count, "layers": LAYERS, "batch_size": BATCH, "cpu_count": os.cpu_count(),
              "images_per_second": summary["images_per_second"], "provider": summary["provider"],
              "peak_rss_mib": {f"{int(f * 100)}%": round(peak_until(f), 1) for f in (0.1, 0.25, 0.5, 0.75, 1.0)}}
    (HERE / "explain_folder.json").write_text(json.dumps(result, indent=2) + "\n")
    peaks = result["peak_rss_mib"]
    (HERE / "explain_folder.md").write_text("\n".join([
        "# `onnx-rcam explain` over a large folder", "",
        f"`python benchmarks/explain_folder.py {count}`: {count} JPEG photos made from the bundled ones, the bundled "
        f"EfficientNet-Lite0, layers {', '.join(LAYERS)}, batch {BATCH}, {result['provider']}, "
        f"{os.cpu_count()} cores.", "",
        f"- throughput: {result['images_per_second']} images/s (all outputs written: overlays, sheets, .npz)",
        "- peak resident memory of the process after a share of the images:", "",
        "| images done | " + " | ".join(peaks) + " |", "| --- | " + " | ".join("---:" for _ in peaks) + " |",
        "| peak MiB | " + " | ".join(str(v) for v in peaks.values()) + " |", ""]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
