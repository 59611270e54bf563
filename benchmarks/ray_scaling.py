"""Throughput of `explain_dataset` on a local Ray cluster at 1 and 2 workers, and the driver's memory against the
dataset's size (issue 18).

    python benchmarks/ray_scaling.py [SMALL LARGE]   # default 1000 5000; writes benchmarks/ray_scaling.{json,md}

Makes LARGE photos from the bundled ones (explain_folder.make_photos) in a temporary folder, and SMALL of them in a
second folder (hard links). Each run is a fresh driver process (a local cluster, `ray.init(num_cpus=2)`) whose own
resident memory (not the workers') is sampled twice a second: SMALL images at 1 worker, SMALL at 2, LARGE at 2.
Flat memory: the driver's peak over LARGE images is within a few percent of its peak over SMALL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from explain_folder import make_photos, resident_mib

from onnx_rcam.models_path import default_model_path

HERE = Path(__file__).resolve().parent
LAYERS = ["auto", "_blocks.10"]
BATCH = 16
DRIVER = """
import json, sys, ray
from onnx_rcam.distributed import explain_dataset
photos, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
run = explain_dataset(sys.argv[4], photos, out, layers=sys.argv[5].split(","), batch_size=int(sys.argv[6]),
                      workers=workers)
open(sys.argv[7], "w").write(json.dumps({"images": run.images, "explained": run.explained, "seconds": run.seconds,
                  "images_per_second": run.images_per_second, "providers": sorted(run.providers)}))

"""


def measure(photos: Path, out: Path, workers: int) -> dict:
    """One run in a fresh driver process: its result and the driver's peak resident memory."""
    child = subprocess.Popen([sys.executable, "-c", DRIVER, str(photos), str(out), str(workers),
                              str(default_model_path()), ",".join(LAYERS), str(BATCH), str(out) + ".json"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, load = 0.0, []
    while child.poll() is None:
        peak = max(peak, resident_mib(child.pid))
        load.append(os.getloadavg()[0])
        time.sleep(0.5)
    if child.returncode != 0:
        raise SystemExit(f"the driver failed with status {child.returncode}")
    result = json.loads(Path(str(out) + ".json").read_text())  # a file: Ray writes lines of its own to stdout
    return {**result, "workers": workers, "driver_peak_rss_mib": round(peak, 1),
            "images_per_second": round(result["images_per_second"], 2), "seconds": round(result["seconds"], 1),
            "load_average_mean": round(sum(load) / len(load), 1), "load_average_max": round(max(load), 1)}


def main(small: int, large: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        everything, subset = Path(scratch) / "large", Path(scratch) / "small"
        everything.mkdir()
        subset.mkdir()
        make_photos(everything, large)
        for photo in sorted(everything.iterdir())[:small]:
            os.link(photo, subset / photo.name)
        runs = [measure(subset, Path(scratch) / "out1", 1), measure(subset, Path(scratch) / "out2", 2),
                measure(everything, Path(scratch) / "out3", 2)]
    per_worker = runs[0]["images_per_second"]
    result = {"layers": LAYERS, "batch_size": BATCH, "cpu_count": os.cpu_count(), "runs": runs,
              "per_worker_images_per_second": per_worker}
    (HERE / "ray_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {r['images']} | {r['workers']} | {r['images_per_second']} | {r['seconds']} | "
            f"{r['driver_peak_rss_mib']} | {r['load_average_mean']} ({r['load_average_max']}) |" for r in runs]
    (HERE / "ray_scaling.md").write_text("\n".join([
        "# `explain_dataset` on a local Ray cluster", "",
        f"`python benchmarks/ray_scaling.py {small} {large}`: JPEG photos made from the bundled ones, the bundled "
        f"EfficientNet-Lite0 at its native 224 x 224, layers {', '.join(LAYERS)}, batch {BATCH}, "
        f"{', '.join(runs[0]['providers'])}, maps only (no overlays), `ray.init(num_cpus=2)` on a "
        f"{os.cpu_count()}-core machine shared with other work (the load average during each run is in the table: "
        "above 2, other processes were competing for the two cores). Each worker holds one onnxruntime session "
        "with one thread. Throughput counts from the driver's start of the run to its last summary row, so it "
        "includes the workers' start.", "",
        "| images | workers | images/s | seconds | driver peak RSS (MiB) | load average, mean (max) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |", *rows, "",
        f"The driver's peak resident memory over {large} images against {small}: "
        f"{runs[2]['driver_peak_rss_mib']} MiB against {runs[1]['driver_peak_rss_mib']} MiB. It holds the list "
        "of image paths (about 100 bytes each) and one batch of summary rows at a time; the maps stay with the "
        "workers.", ""]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:3])) if len(sys.argv) > 2 else main(1000, 5000)
