"""What each issue-15 candidate adds to rcam in the same run, on the bundled EfficientNet-Lite0 (speed.md).

Each configuration is one augmented model at the four depths of reports/ (`_blocks.2`, `_blocks.4`, `_blocks.10`,
`auto`): rcam alone, rcam plus one candidate method, rcam under the rcam_bias composite, rcam with the fused map,
and rcam with every candidate at once. Runs take turns (speed.interleaved_times); the table gives the median time
and its ratio to rcam alone at the same batch. Writes speed-candidates.json and speed-candidates.md.

    python benchmarks/candidates.py [--batches 1 8] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnx_rcam
from configurations import session_options
from speed import OtherProcessesCpu, interleaved_times, machine_info

LAYERS = ["_blocks.2", "_blocks.4", "_blocks.10", "auto"]
CANDIDATES = ["lrp-pos", "rcam-pos", "rcam-elem"]
# name -> augment's arguments besides the model and layers
CONFIGURATIONS = {
    "rcam": {},
    **{f"rcam + {name}": {"methods": ["rcam", name]} for name in CANDIDATES},
    "rcam, composite rcam_bias": {"composite": "rcam_bias"},
    "rcam + fused map": {"fuse": True},
    "rcam + all candidates, fused": {"methods": ["rcam", *CANDIDATES], "fuse": True},
}
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sessions = {name: ort.InferenceSession(
        onnx_rcam.augment(onnx_rcam.default_model_path(), layers=LAYERS, **settings).SerializeToString(),
        session_options(args.threads), providers=["CPUExecutionProvider"]) for name, settings in CONFIGURATIONS.items()}
    rng = np.random.default_rng(0)
    rows, others = [], OtherProcessesCpu()
    for batch in args.batches:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        runners = {name: (lambda s=session: s.run(None, {"input": x})) for name, session in sessions.items()}
        for run in runners.values():  # warm-up
            run()
        times = {name: statistics.median(t) for name, t in interleaved_times(runners, args.repeats).items()}
        rows += [{"batch": batch, "configuration": name, "median_ms": 1000 * t, "over_rcam": t / times["rcam"]}
                 for name, t in times.items()]
    result = {"machine": machine_info(args.threads), "other_processes_cores": others.cores(), "layers": LAYERS,
              "repeats": args.repeats, "rows": rows}
    (HERE / "speed-candidates.json").write_text(json.dumps(result, indent=1))
    lines = ["# Issue 15's candidates: their cost over rcam in the same run", "",
             f"The bundled EfficientNet-Lite0 at {', '.join(f'`{layer}`' for layer in LAYERS)}, onnxruntime CPU, "
             f"{args.threads} threads, median of {args.repeats} interleaved runs; {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores, other processes kept {result['other_processes_cores']:.1f} cores "
             f"busy on average (`python benchmarks/candidates.py`).", "",
             "| batch | configuration | median (ms) | over rcam alone |", "| ---: | --- | ---: | ---: |"]
    lines += [f"| {r['batch']} | {r['configuration']} | {r['median_ms']:.1f} | {r['over_rcam']:.2f}x |" for r in rows]
    (HERE / "speed-candidates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
