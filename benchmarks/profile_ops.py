"""Where the augmented model's time goes, on the CPU: onnxruntime's profiler, per op type and per node.

    python benchmarks/profile_ops.py                     # ResNet50, all stages, batch 8, 2 threads -> profile.md
    python benchmarks/profile_ops.py --model efficientnet_lite0 --configuration "two stages" --output profile-eff

The plain and the augmented model (configurations.py) each run --runs times after two warm-ups in a profiled
session (SessionOptions.enable_profiling); kernel times are summed per op type and divided by the runs. The
augmented model's extra time per op type is its time minus the plain model's: what the generated graph costs,
reorders and fusions that it changes included. The --top slowest generated nodes follow, and the counts of ops in
onnxruntime's optimised graph (ReorderInput/ReorderOutput: copies between NCHW and its blocked NCHWc layout).
Profiling adds overhead per node: speed.py's unprofiled times are the ones to compare with the targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnx_rcam
from configurations import IMAGE_SHAPE, SUBJECTS, model_file, save, session_options

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent / "tests"))  # tests/zoo.py, to export


def profile(path: Path, feeds: dict, runs: int, threads: int, scratch: Path) -> tuple[Counter, Counter, Counter]:
    """ms per run by op type, ms per run by (op, node), and the op counts of onnxruntime's optimised graph."""
    options = session_options(threads, profile_prefix=str(scratch / path.stem))
    options.optimized_model_filepath = str(scratch / f"{path.stem}.optimised.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(2 + runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    durations, op_of = defaultdict(list), {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations[event["name"]].append(event["dur"])
            op_of[event["name"]] = event["args"]["op_name"]
    by_op, by_node = Counter(), Counter()
    for name, times in durations.items():  # the profile holds the warm-ups too: keep each node's last `runs`
        ms = sum(times[-runs:]) / runs / 1e3
        by_op[op_of[name]] += ms
        by_node[(op_of[name], name.removesuffix("_kernel_time"))] += ms
    optimised = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return by_op, by_node, Counter(n.op_type for n in optimised.graph.node)


def markdown(args, layers: list[str], plain: tuple, augmented: tuple, command: str) -> str:
    (plain_ops, _, plain_graph), (ops, nodes, graph) = plain, augmented
    total_plain, total = sum(plain_ops.values()), sum(ops.values())
    lines = [f"# Profile: {args.model}, {args.configuration} ({', '.join(layers)}), batch {args.batch}", "",
             f"`{command}`: onnxruntime {ort.__version__} CPU provider, {args.threads} intra-op threads, kernel "
             f"time per run (mean of {args.runs} profiled runs after two warm-ups). Plain {total_plain:.1f} ms, "
             f"augmented {total:.1f} ms ({total / total_plain:.2f}x). Profiling adds per-node overhead; "
             "speed.md's unprofiled medians are the ones held to the targets.", "",
             "| op | plain ms | augmented ms | added ms | share of added | nodes in optimised graph (plain -> "
             "augmented) |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    added_total = total - total_plain
    for op in sorted(set(ops) | set(plain_ops), key=lambda o: -(ops[o] - plain_ops[o])):
        added = ops[op] - plain_ops[op]
        if max(ops[op], plain_ops[op]) < 0.05:
            continue
        lines.append(f"| {op} | {plain_ops[op]:.1f} | {ops[op]:.1f} | {added:+.1f} | "
                     f"{added / added_total:.0%} | {plain_graph[op]} -> {graph[op]} |")
    lines += ["", f"Slowest nodes of the augmented model (top {args.top}; `rcam/` ones are generated):", "",
              "| ms | op | node |", "| ---: | --- | --- |"]
    lines += [f"| {ms:.2f} | {op} | `{node}` |" for (op, node), ms in nodes.most_common(args.top)]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(SUBJECTS), default="resnet50")
    parser.add_argument("--configuration", default="all stages", help="last stage, two stages or all stages")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--width", type=float, default=1.0, help="channel width of ResNet50 and VGG16")
    parser.add_argument("--models-dir", type=Path, help="plain models (default: exported into a temporary folder)")
    parser.add_argument("--output", default="profile", help="file stem in benchmarks/")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    subject = SUBJECTS[args.model]
    if args.configuration not in subject.stages:
        sys.exit(f"profile_ops: --configuration must be one of {', '.join(subject.stages)}")
    layers = subject.stages[args.configuration]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = args.models_dir or scratch
        plain_path = model_file(subject, folder, args.width if subject.zoo_builder else 1.0)
        augmented_path = save(onnx_rcam.augment(plain_path, layers=layers), scratch / "augmented.onnx")
        images = np.random.default_rng(0).normal(size=(args.batch, *IMAGE_SHAPE)).astype(np.float32)
        feeds = {subject.input_name: images}
        plain = profile(plain_path, feeds, args.runs, args.threads, scratch)
        augmented = profile(augmented_path, feeds, args.runs, args.threads, scratch)
    command = "python benchmarks/profile_ops.py " + " ".join(f'"{a}"' if " " in a else a for a in sys.argv[1:])
    (HERE / f"{args.output}.md").write_text(markdown(args, layers, plain, augmented, command.strip()))
    print((HERE / f"{args.output}.md").read_text())


if __name__ == "__main__":
    main()
