"""The augmented models on onnxruntime's CUDA provider: placement, agreement with the CPU, throughput.

    python benchmarks/cuda_check.py --models-dir DIR          # writes benchmarks/cuda.json and benchmarks/cuda.md
    python benchmarks/cuda_check.py --models-dir DIR --width 0.5 --models resnet50 --batch 64 --repeats 20

For each model (configurations.py: ResNet50, VGG16, the bundled EfficientNet-Lite0) and each stage configuration:
(a) placement: one profiled run (SessionOptions.enable_profiling); every node event carries the provider that ran
    it. Nodes of the augmented model on CPUExecutionProvider whose names the plain model's CPU nodes do not share
    are listed; the check passes when there are none. The plain model's own CPU nodes are listed beside them.
(b) agreement: the same batch (--check-batch) through a CPU session and a CUDA session with TF32 off (use_tf32=0,
    so both compute in fp32), each explaining the classes the CPU predicted (fed as rcam/target, so that a
    near-tie of two logits cannot pick different classes); every output must satisfy
    max|cuda - cpu| <= 1e-4 * max|cpu|. Classes predicted without that feed are compared and counted separately.
(c) throughput: images/s at --batch (64), the plain and the augmented sessions taking turns (one warm-up each;
    each turn one untimed and one timed run), median of --repeats turns, default CUDA provider options (recorded),
    numpy in and out, every output fetched, as Explainer does.

Deployed forms (forms.py, --forms; default both): ResNet50 and the bundled model also as fp16 (keep_io_types=True)
and INT8 QDQ, made here as speed.py makes them; each checked the same way, the fp16 form explained with an fp32 and
with an fp16 backward, and its throughput also against the fp32 plain model. Their CPU and CUDA kernels round
differently (fp16 arithmetic; integer QLinearConv on the CPU against dequantize-compute-quantize on CUDA), so their
agreement is reported, not judged; placement is judged as for the float32 model.

Models: DIR holds resnet50.onnx and vgg16.onnx (or resnet50-w0.5.onnx ... with --width) as written by
`python benchmarks/speed.py --export-only DIR [--width W]`; a missing one is exported here when torch is installed.
The bundled model is copied in from models/. Needs onnxruntime-gpu and the installed package (offline:
`pip install --no-deps --no-build-isolation .`, with wheels of its dependencies), onnxconverter-common for the fp16
form (or --forms int8 / none); torch only to export.
Without a working CUDA provider it stops with status 1 and says which providers onnxruntime offered.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from configurations import BUNDLED_MODEL, IMAGE_SHAPE, SUBJECTS, Subject, model_file, save, session_options
from forms import FORM_MODELS, FORMS, make_form

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent / "tests"))  # tests/zoo.py, to export

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
RELATIVE_TOLERANCE = 1e-4


def require_cuda() -> None:
    """Exit with a clear message unless a session really runs on the CUDA provider."""
    available = ort.get_available_providers()
    if CUDA not in available:
        sys.exit(f"cuda_check: onnxruntime {ort.__version__} offers no CUDA provider (available: {available}); "
                 "install onnxruntime-gpu on a machine with an NVIDIA GPU.")
    if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21: CUDA and cuDNN from pip's nvidia-* packages
        ort.preload_dlls()
    probe = ort.InferenceSession(str(BUNDLED_MODEL), session_options(), providers=[CUDA, CPU])
    if probe.get_providers()[0] != CUDA:
        sys.exit(f"cuda_check: onnxruntime {ort.__version__} lists {available}, but a session asking for CUDA got "
                 f"{probe.get_providers()}: the CUDA provider did not load (its error is logged above; "
                 "onnxruntime-gpu needs the CUDA and cuDNN versions it was built for, and a GPU).")


def gpu_name() -> str:
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    devices = ort.get_ep_devices() if hasattr(ort, "get_ep_devices") else []  # onnxruntime >= 1.22
    gpus = [d.device for d in devices if d.device.type == ort.OrtHardwareDeviceType.GPU]
    if gpus:
        return f"{gpus[0].vendor} {dict(gpus[0].metadata)}"
    return "unknown (no nvidia-smi, no GPU device in onnxruntime)"


def plain_model(subject: Subject, folder: Path, width: float) -> Path:
    path = folder / subject.file_name(width)
    if subject.zoo_builder and not path.exists() and importlib.util.find_spec("torch") is None:
        sys.exit(f"cuda_check: {path} is missing and torch is not installed to export it; run "
                 f"`python benchmarks/speed.py --export-only {folder} --width {width:g}` where torch is, and bring "
                 "the files.")
    return model_file(subject, folder, width)


def cuda_session(path: Path, exact: bool = False, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = [{"use_tf32": "0"} if exact else {}, {}]
    return ort.InferenceSession(str(path), session_options(profile_prefix=profile_prefix), providers=[CUDA, CPU],
                                provider_options=options)


def cpu_nodes(path: Path, feeds: dict, profile_prefix: str) -> tuple[list[dict], int]:
    """(op, node) of every node one profiled CUDA run placed on the CPU, and how many nodes ran in all."""
    session = cuda_session(path, profile_prefix=profile_prefix)
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    placed = {(e["args"]["op_name"], e["name"].removesuffix("_kernel_time")) for e in kernels
              if e["args"].get("provider") == CPU}
    return [{"op": op, "node": node} for op, node in sorted(placed)], len({e["name"] for e in kernels})


def outputs(session: ort.InferenceSession, feeds: dict) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def agreement(path: Path, images: np.ndarray, input_name: str) -> dict:
    cpu = ort.InferenceSession(str(path), session_options(), providers=[CPU])
    cuda = cuda_session(path, exact=True)
    predicted = outputs(cpu, {input_name: images})["rcam/class"]
    feeds = {input_name: images, "rcam/target": predicted.astype(np.int64)}
    on_cpu, on_cuda = outputs(cpu, feeds), outputs(cuda, feeds)
    relative = {name: float(np.abs(on_cuda[name].astype(np.float64) - reference).max()
                            / max(np.abs(reference).max(), 1e-30)) for name, reference in on_cpu.items()}
    classes_differing = int((outputs(cuda, {input_name: images})["rcam/class"] != predicted).sum())
    return {"max_relative_difference": relative, "worst": max(relative.values()),
            "passes": all(v <= RELATIVE_TOLERANCE for v in relative.values()),
            "predicted_classes_differing": classes_differing}


def throughput(paths: dict[str, Path], feeds: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    sessions = {name: cuda_session(path) for name, path in paths.items()}
    for session in sessions.values():
        session.run(None, feeds)
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            session.run(None, feeds)
            started = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - started)
    return times, sessions["plain"].get_provider_options()[CUDA]


def check_subject(subject: Subject, folder: Path, scratch: Path, args) -> dict:
    width = args.width if subject.zoo_builder else 1.0
    plain_path = plain_model(subject, folder, width)
    result = {"width": width} | check_form(subject, "fp32", plain_path, None, scratch, args)
    forms = [form for form in args.forms if subject.name in FORM_MODELS]
    if forms:
        result["forms"] = {form: check_form(subject, form, make_form(form, subject, plain_path, scratch), plain_path,
                                            scratch, args) for form in forms}
    return result


def check_form(subject: Subject, form: str, plain_path: Path, fp32_plain: Path | None, scratch: Path, args) -> dict:
    """Placement, agreement and throughput of one form's augmented configurations (fp32: the float32 model)."""
    import onnx_rcam  # after require_cuda, so that a machine without CUDA hears that first

    backwards = FORMS[form].backwards if form in FORMS else ("fp32",)
    paths, configurations = {"plain": plain_path}, {}
    for backward in backwards:
        for configuration, layers in subject.stages.items():
            name = configuration if backward == backwards[0] else f"{configuration}, {backward} backward"
            configurations[name] = {"configuration": configuration, "layers": layers, "backward": backward}
            paths[name] = scratch / f"{plain_path.stem}.{name.replace(' ', '-').replace(',', '')}.onnx"
            save(onnx_rcam.augment(plain_path, layers=layers, precision=backward), paths[name])

    rng = np.random.default_rng(0)
    check_images = rng.normal(size=(args.check_batch, *IMAGE_SHAPE)).astype(np.float32)
    plain_cpu_nodes, _ = cpu_nodes(plain_path, {subject.input_name: check_images}, str(scratch / plain_path.stem))
    plain_cpu_names = {n["node"] for n in plain_cpu_nodes}
    result = {"plain_cpu_nodes": plain_cpu_nodes, "configurations": {}}
    if form != "fp32":
        result |= {"made_by": FORMS[form].made_by, "agreement_judged": False}
    for name, configuration in configurations.items():
        path = paths[name]
        placed, total = cpu_nodes(path, {subject.input_name: check_images}, str(scratch / path.stem))
        added = [n for n in placed if n["node"] not in plain_cpu_names]
        agreed = agreement(path, check_images, subject.input_name)
        if form != "fp32":  # CPU and CUDA kernels of fp16 and QDQ models round differently: reported, not judged
            agreed["passes"] = None
        result["configurations"][name] = configuration | {
            "nodes_run": total, "cpu_nodes_not_in_plain": added, "placement_passes": not added, "agreement": agreed}
        print(f"{subject.name} {FORMS[form].label if form in FORMS else form} {name}: {len(added)} nodes on the CPU "
              f"beyond the plain model's, worst relative difference {agreed['worst']:.1e}", flush=True)

    images = rng.normal(size=(args.batch, *IMAGE_SHAPE)).astype(np.float32)
    if fp32_plain is not None:  # a deployed form takes turns with the float32 plain model too
        paths["fp32 plain"] = fp32_plain
    times, provider_options = throughput(paths, {subject.input_name: images}, args.repeats)
    result["cuda_provider_options"] = provider_options
    plain_rate = args.batch / statistics.median(times["plain"])
    fp32_rate = args.batch / statistics.median(times.get("fp32 plain", times["plain"]))
    result["throughput"] = {}
    for name, seconds in times.items():
        rate = args.batch / statistics.median(seconds)
        result["throughput"][name] = {"images_per_s": rate, "vs_plain": rate / plain_rate,
                                      "vs_fp32_plain": rate / fp32_rate, "runs_ms": [t * 1e3 for t in seconds]}
        print(f"{subject.name} {form} batch {args.batch} {name}: {rate:.0f} images/s ({rate / plain_rate:.2f}x plain, "
              f"{rate / fp32_rate:.2f}x fp32 plain)", flush=True)
    return result


def markdown(report: dict, command: str) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = ["# Augmented models on onnxruntime's CUDA provider", "",
             f"`{command}` on {machine['gpu']}, {machine['date']}: onnxruntime {machine['onnxruntime']}. Placement "
             f"from one profiled run; agreement at batch {settings['check_batch']} with TF32 off, tolerance "
             f"max|cuda - cpu| <= {RELATIVE_TOLERANCE:g} * max|cpu| per output; throughput at batch "
             f"{settings['batch']}, median of {settings['repeats']} interleaved turns, default CUDA options, every "
             "output fetched to numpy."]
    forms = {form: made["made_by"] for result in report["models"].values()
             for form, made in result.get("forms", {}).items()}
    if forms:
        lines += ["", "Deployed forms, in the same tables under their form (vs plain: against the form's plain model; "
                  "vs fp32 plain: against the float32 plain model, which takes turns with the form's sessions; their "
                  "CPU and CUDA kernels round differently, so their agreement is reported, not judged):"]
        lines += [f"- {FORMS[form].label}: {made_by}" for form, made_by in forms.items()]
    for name, result in report["models"].items():
        width = f", width {result['width']:g}" if result["width"] != 1.0 else ""
        plain = result["throughput"]["plain"]
        lines += ["", f"## {name}{width}", "",
                  f"Plain: {plain['images_per_s']:.0f} images/s; {len(result['plain_cpu_nodes'])} of its nodes on "
                  "the CPU.", "",
                  "| form | configuration | images/s | vs plain | vs fp32 plain | extra nodes on CPU | placement "
                  "| worst relative diff | agreement | classes differing without target |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |"]
        checked = [("fp32", result)] + list(result.get("forms", {}).items())
        for form, check_of_form in checked:
            label = FORMS[form].label if form in FORMS else form
            if form != "fp32":
                rate = check_of_form["throughput"]["plain"]
                lines.append(f"| {label} | plain | {rate['images_per_s']:.0f} | 1.00x | {rate['vs_fp32_plain']:.2f}x | "
                             f"({len(check_of_form['plain_cpu_nodes'])} on CPU) | | | | |")
            for name, check in check_of_form["configurations"].items():
                rate = check_of_form["throughput"][name]
                passes = check["agreement"]["passes"]
                form_cell = label if form == "fp32" else f"{label} ({check['backward']} backward)"
                lines.append(
                    f"| {form_cell} | {check['configuration']} ({', '.join(check['layers'])}) | "
                    f"{rate['images_per_s']:.0f} | {rate['vs_plain']:.2f}x | {rate['vs_fp32_plain']:.2f}x | "
                    f"{len(check['cpu_nodes_not_in_plain'])} | "
                    f"{'met' if check['placement_passes'] else 'not met'} | {check['agreement']['worst']:.1e} | "
                    f"{'reported' if passes is None else 'met' if passes else 'not met'} | "
                    f"{check['agreement']['predicted_classes_differing']} |")
        misplaced = {n["node"]: n["op"] for _, check_of_form in checked
                     for c in check_of_form["configurations"].values() for n in c["cpu_nodes_not_in_plain"]}
        if misplaced:
            listed = ", ".join(f"`{node}` ({op})" for node, op in sorted(misplaced.items()))
            lines += ["", f"Nodes on the CPU: {listed}"]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="plain ONNX models (default: a temporary folder, exported "
                                                         "here; needs torch)")
    parser.add_argument("--models", nargs="+", choices=list(SUBJECTS), default=list(SUBJECTS))
    parser.add_argument("--width", type=float, default=1.0, help="channel width of ResNet50 and VGG16 files")
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--check-batch", type=int, default=8, help="agreement and placement batch")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--forms", nargs="+", choices=[*FORMS, "none"], default=list(FORMS),
                        help=f"deployed forms of {' and '.join(FORM_MODELS)} to check too (default: all; none)")
    parser.add_argument("--output", default="cuda", help="file stem in benchmarks/")
    args = parser.parse_args()
    args.forms = [form for form in dict.fromkeys(args.forms) if form != "none"]
    return args


def main() -> None:
    args = parse_args()
    require_cuda()
    report = {"machine": {"gpu": gpu_name(), "onnxruntime": ort.__version__, "python": platform.python_version(),
                          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
              "settings": {"batch": args.batch, "check_batch": args.check_batch, "repeats": args.repeats,
                           "width": args.width, "forms": args.forms},
              "models": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            report["models"][name] = check_subject(SUBJECTS[name], folder, Path(scratch), args)
    command = "python benchmarks/cuda_check.py " + " ".join(sys.argv[1:])
    (HERE / f"{args.output}.json").write_text(json.dumps(report, indent=1) + "\n")
    (HERE / f"{args.output}.md").write_text(markdown(report, command.strip()))
    print(f"wrote {HERE / args.output}.json and .md")
    failed = [f"{name} {form} {configuration}" for name, result in report["models"].items()
              for form, checked in [("fp32", result), *result.get("forms", {}).items()]
              for configuration, check in checked["configurations"].items()
              if not (check["placement_passes"] and check["agreement"]["passes"] is not False)]
    if failed:
        sys.exit(f"cuda_check: placement or agreement not met for {', '.join(failed)}")


if __name__ == "__main__":
    main()
