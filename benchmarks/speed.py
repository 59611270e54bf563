"""Speed of the augmented model against the plain one and against Relevance-CAM in eager PyTorch, on the CPU.

    python benchmarks/speed.py                        # writes benchmarks/speed.json and benchmarks/speed.md
    python benchmarks/speed.py --quick                # a check that the script works: speed-quick.{json,md}
    python benchmarks/speed.py --models resnet50 --batches 1 8 --repeats 10 --threads 4 --output speed-r50
    python benchmarks/speed.py --forms none           # the float32 models only (no onnxconverter-common needed)
    python benchmarks/speed.py --export-only DIR [--width 0.5]   # only write the plain ONNX models into DIR

Needs the test extras (torch exports tests/zoo.py's random-weight ResNet50 and VGG16 and runs the reference).
Models: ResNet50 and VGG16 (random weights, seed 0, TorchScript export) and the bundled EfficientNet-Lite0; each
plain and augmented with the last stage, two stages (stride 8 and the last) and all stages (configurations.py),
at batch 1, 8 and 32, on onnxruntime's CPU provider; beside each augmented configuration, the same maps computed by
tests/reference.py's rules with torch autograd in float32, set up once (torch_reference.py): what a PyTorch user
pays per batch today. EfficientNet-Lite0 has no torch version here, so no torch column.

Deployed forms (forms.py; --forms, default both): ResNet50 and EfficientNet-Lite0 also as fp16
(onnxconverter_common.float16.convert_float_to_float16 with keep_io_types=True: float32 input and outputs) and as
INT8 QDQ (quant_pre_process, then onnxruntime.quantization.quantize_static, S8S8, weights per channel, calibrated on
the mirror images of the bundled photos), each plain and augmented with the same stage configurations and
precision="fp32" (fp32 backward), and the fp16 form also with precision="fp16" (fp16 backward). Each form's sessions
take turns with the fp32 plain model's (vs fp32 plain); vs plain is against the form's own plain model. On the
bundled photos (the int8 form is calibrated on their mirror images), each form's classes and maps are compared with
the fp32 model's, explaining the classes the fp32 model predicted (fed as rcam/target). The fp16 form needs
onnxconverter-common (--forms int8 or none without it).

Time: all sessions and torch references of one model and batch in one process, taking turns (one warm-up each,
which also compares the torch maps with onnxruntime's; each turn is untimed runs for 50 ms, then one timed run),
median of --repeats turns. onnxruntime's intra-op threads and torch's threads are both --threads (default: all cores).
Memory: per configuration, a fresh process (memory_probe.py) reads its resident memory, creates the session (or the
torch model) and runs one batch; peak (VmHWM) minus the memory before is what the configuration adds.
FLOP floor: (forward FLOPs + FLOPs of the generated ops) / forward FLOPs, per image, from the shape-inferred
graphs (flops.py: 2 * MACs for Conv, ConvTranspose, Gemm and MatMul; window size per output for pools; input
elements for reductions; output elements for other arithmetic; 0 for ops that only move data). "vs floor" is the
measured time ratio augmented / plain divided by that FLOP-floor ratio: 1.0 means the generated ops run as
efficiently, per FLOP, as the forward pass.

Targets (the issue's), marked met / not met in speed.md: ResNet50 at batch 8 with two and with all stages within
1.3x of the FLOP floor; the last stage within 1.15x of the plain model; at batch 1 and 8 at least 3x faster than
the torch reference; peak memory added at most 2x the plain model's.

--quick: batch 1, 3 repeats, ResNet50 and VGG16 at 1/8 width (their forms too); it writes speed-quick.json/md, never
the real results.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnx_rcam
from configurations import IMAGE_SHAPE, SUBJECTS, Subject, model_file, save, session_options
from flops import forward_and_generated
from forms import FORM_MODELS, FORMS, make_form, photo_batch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# From this batch on, every onnxruntime run hands its arena back when it returns: VGG16's four sessions kept 24 GiB
# of arenas at batch 32 between their turns, and the OOM killer ended the run.
SHRINK_FROM_BATCH = 32
SETTLE_SECONDS = 0.05  # untimed runs at the start of each turn (see interleaved_times)
BUSY_CORES = 0.25  # CPU that other processes used during the run, in cores, above which speed.md warns
QUICK = {"batches": [1], "repeats": 3, "width": 0.125}
FULL = {"batches": [1, 8, 32], "repeats": 10, "width": 1.0}

# The targets. Each: a label, the rows it applies to, the row's number it checks and its bound.
FLOOR_LIMIT, LAST_STAGE_LIMIT, TORCH_SPEEDUP_MIN, MEMORY_LIMIT = 1.3, 1.15, 3.0, 2.0
TARGETS = [
    (f"ResNet50, batch 8, two and all stages: time ratio <= {FLOOR_LIMIT}x the FLOP-floor ratio",
     lambda r: r["model"] == "resnet50" and r["batch"] == 8 and r["configuration"] in ("two stages", "all stages"),
     "vs_floor", lambda v: v <= FLOOR_LIMIT),
    (f"last stage: <= {LAST_STAGE_LIMIT}x the plain model's time",
     lambda r: r["configuration"] == "last stage", "vs_plain", lambda v: v <= LAST_STAGE_LIMIT),
    (f"batch 1 and 8: >= {TORCH_SPEEDUP_MIN:g}x faster than the torch reference",
     lambda r: r["batch"] in (1, 8) and r.get("speedup_vs_torch") is not None,
     "speedup_vs_torch", lambda v: v >= TORCH_SPEEDUP_MIN),
    (f"peak memory added: <= {MEMORY_LIMIT:g}x the plain model's",
     lambda r: r["configuration"] != "plain", "memory_vs_plain", lambda v: v <= MEMORY_LIMIT),
]


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "torch": torch.__version__, "onnxconverter_common": package_version("onnxconverter-common"),
            "provider": "CPUExecutionProvider", "onnxruntime_intra_op_threads": threads,
            "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


class OtherProcessesCpu:
    """CPU time that processes other than this one and its children use from now on, from /proc/stat."""

    def __init__(self):
        self.started, self.busy, self.own = time.perf_counter(), self.system_busy(), self.own_busy()

    @staticmethod
    def system_busy() -> float:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def own_busy() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    def cores(self) -> float:
        """Average number of cores the others kept busy since creation."""
        others = (self.system_busy() - self.busy) - (self.own_busy() - self.own)
        return max(others, 0.0) / (time.perf_counter() - self.started)


def interleaved_times(runners: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each runner; they take turns so that drift hits all alike (warm-ups are the caller's).

    Each turn starts with untimed runs for at least SETTLE_SECONDS: the previous runner's thread pool still spins
    for a while after it returns and competes for the cores. On 2 cores the torch reference's last-stage time
    tripled after an onnxruntime turn without them; the bundled model at batch 1 (4.3 ms alone) took 9.3 ms after
    one untimed run and 4.7 ms after 30 ms of them.
    """
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            settling = time.perf_counter()
            run()
            while time.perf_counter() - settling < SETTLE_SECONDS:
                run()
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def memory(runtime: str, target: str, batch: int, threads: int, extra: list[str]) -> dict:
    command = [sys.executable, str(HERE / "memory_probe.py"), runtime, target, "--batch", str(batch),
               "--threads", str(threads), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Variant:
    """One session of a benchmarked model: a form, explained (or not) with a backward precision and layers."""

    form: str  # fp32, or a key of forms.FORMS
    backward: str | None  # augment's precision; None for the plain model
    configuration: str  # plain, or a stage configuration of configurations.py
    layers: tuple[str, ...]
    path: Path

    @property
    def name(self) -> str:
        """Unique among one model's variants: `plain`, `last stage`, `fp16 plain`, `fp16 last stage fp16-backward`."""
        if self.form == "fp32":
            return self.configuration
        suffix = "" if self.backward in (None, FORMS[self.form].backwards[0]) else f" {self.backward}-backward"
        return f"{self.form} {self.configuration}{suffix}"


def prepare_models(subject: Subject, folder: Path, width: float, form: str = "fp32") -> tuple[list[Variant], dict]:
    """The plain and augmented files of one form of `subject`, and the FLOP counts of each augmented variant."""
    plain_path = model_file(subject, folder, width)
    if form != "fp32":
        plain_path = make_form(form, subject, plain_path)
    plain = onnx.load(plain_path)
    variants, flops = [Variant(form, None, "plain", (), plain_path)], {}
    for backward in (FORMS[form].backwards if form != "fp32" else ("fp32",)):
        for configuration, layers in subject.stages.items():
            augmented = onnx_rcam.augment(plain_path, layers=layers, precision=backward)
            variant = Variant(form, backward, configuration, tuple(layers), folder)  # its path comes below
            forward, generated = forward_and_generated(plain, augmented)
            flops[variant.name] = {"forward": forward.total, "generated": generated.total,
                                   "floor_ratio": (forward.total + generated.total) / forward.total,
                                   "generated_by_op": dict(generated.by_op.most_common()),
                                   "unresolved": forward.unresolved + generated.unresolved}
            suffix = variant.name.removeprefix(f"{form} ").replace(" ", "-")  # plain_path.stem names the form
            path = save(augmented, folder / f"{plain_path.stem}.{suffix}.onnx")
            variants.append(dataclasses.replace(variant, path=path))
    return variants, flops


def open_sessions(variants: list[Variant], threads: int) -> dict[str, ort.InferenceSession]:
    return {v.name: ort.InferenceSession(str(v.path), session_options(threads), providers=["CPUExecutionProvider"])
            for v in variants}


def session_runners(sessions: dict[str, ort.InferenceSession], feeds: dict, batch: int) -> dict[str, Callable]:
    run_options = ort.RunOptions()
    if batch >= SHRINK_FROM_BATCH:
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return {name: (lambda s=s: s.run(None, feeds, run_options)) for name, s in sessions.items()}


def named(session: ort.InferenceSession, values: list[np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], values, strict=True))


def predicted(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The class of each sample: rcam/class of an augmented model, the argmax of a plain model's first output."""
    if "rcam/class" in outputs:
        return outputs["rcam/class"].reshape(len(outputs["rcam/class"]), -1)[:, 0]
    return next(iter(outputs.values())).reshape(len(next(iter(outputs.values()))), -1).argmax(1)


def variant_row(subject: Subject, variant: Variant, batch: int, times: dict, floor: float, threads: int) -> dict:
    median = {name: statistics.median(t) for name, t in times.items()}
    plain = "plain" if variant.form == "fp32" else f"{variant.form} plain"
    return {"model": subject.name, "batch": batch, "form": variant.form, "backward": variant.backward,
            "configuration": variant.configuration, "layers": list(variant.layers),
            "median_ms": median[variant.name] * 1e3, "runs_ms": [t * 1e3 for t in times[variant.name]],
            "vs_plain": median[variant.name] / median[plain],
            "vs_fp32_plain": median[variant.name] / median["plain"], "floor_ratio": floor,
            "vs_floor": median[variant.name] / median[plain] / floor,
            "memory": memory("onnxruntime", str(variant.path), batch, threads, ["--input-name", subject.input_name])}


def benchmark_subject(subject: Subject, folder: Path, args) -> tuple[dict, list[dict]]:
    import torch

    from torch_reference import PreparedReference

    width = args.width if subject.zoo_builder else 1.0
    print(f"{subject.name}: export, augment, count FLOPs", flush=True)
    variants, flops = prepare_models(subject, folder, width)
    forms = [form for form in args.forms if subject.name in FORM_MODELS]
    form_variants, form_flops = {}, {}
    for form in forms:
        print(f"{subject.name}: make the {form} form, augment, count FLOPs", flush=True)
        form_variants[form], form_flops[form] = prepare_models(subject, folder, width, form)
    floors = {"plain": 1.0} | {name: f["floor_ratio"] for name, f in flops.items()}
    floors |= {f"{form} plain": 1.0 for form in forms}
    floors |= {name: f["floor_ratio"] for counts in form_flops.values() for name, f in counts.items()}
    fidelity = {}
    if forms:
        print(f"{subject.name}: the forms' classes and maps on the bundled photos against the fp32 model's", flush=True)
        fidelity = compare_with_fp32(subject, variants, [v for form in forms for v in form_variants[form]],
                                     args.threads)
    references = {}
    if subject.zoo_builder:
        torch_model, example = subject.torch_model(width), torch.randn(1, *IMAGE_SHAPE)
        references = {configuration: PreparedReference(torch_model, layers, example, tokens=subject.tokens)
                      for configuration, layers in subject.stages.items()}

    rows = []
    for batch in args.batches:
        images = np.random.default_rng(0).normal(size=(batch, *IMAGE_SHAPE)).astype(np.float32)
        feeds, x = {subject.input_name: images}, torch.from_numpy(images)
        # Per batch, and gone before the memory probes: VGG16's four sessions hold 18 GiB after batch 32, and a
        # probe beside them ran this 24 GiB machine out of memory.
        sessions = open_sessions(variants, args.threads)
        runners = session_runners(sessions, feeds, batch)
        warm_up = {name: named(sessions[name], run()) for name, run in runners.items()}
        map_difference = {}
        for configuration, prepared in references.items():  # the torch warm-ups, checked against onnxruntime's
            runners[f"torch {configuration}"] = lambda p=prepared, x=x: p(x)
            maps = runners[f"torch {configuration}"]()
            ours = warm_up[configuration]
            map_difference[configuration] = max(float(np.abs(ours[f"rcam/{layer}/map"] - maps[layer][1].numpy()).max())
                                                for layer in subject.stages[configuration])
        print(f"{subject.name} batch {batch}: timing {len(runners)} runners, {args.repeats} turns", flush=True)
        times = interleaved_times(runners, args.repeats)
        median = {name: statistics.median(t) for name, t in times.items()}
        del sessions, runners, warm_up
        gc.collect()

        batch_rows = []
        for variant in variants:
            print(f"{subject.name} batch {batch}: memory of {variant.name}", flush=True)
            row = variant_row(subject, variant, batch, times, floors[variant.name], args.threads)
            configuration = variant.configuration
            if configuration in references:
                torch_times = times[f"torch {configuration}"]
                row |= {"torch_median_ms": median[f"torch {configuration}"] * 1e3,
                        "torch_runs_ms": [t * 1e3 for t in torch_times],
                        "speedup_vs_torch": median[f"torch {configuration}"] / median[configuration],
                        "max_map_difference_vs_torch": map_difference[configuration],
                        "torch_memory": memory("torch", subject.name, batch, args.threads,
                                               ["--width", str(width), *(a for layer in variant.layers
                                                                         for a in ("--layer", layer))])}
            batch_rows.append(row)
        set_memory_vs_plain(batch_rows)
        rows += batch_rows

        for form in forms:
            rows += benchmark_form(subject, form_variants[form], variants[0], batch, feeds, floors, fidelity, args)
    summary = {"width": width, "configurations": subject.stages, "flops": flops}
    if forms:
        summary["forms"] = {form: {"made_by": FORMS[form].made_by, "backwards": list(FORMS[form].backwards),
                                   "flops": form_flops[form]} for form in forms}
    return summary, rows


def compare_with_fp32(subject: Subject, fp32_variants: list[Variant], form_variants: list[Variant],
                      threads: int) -> dict[str, dict]:
    """Per form variant, on the bundled photos (forms.photo_batch; the int8 form was calibrated on their mirror
    images): a plain model's classes that differ from the fp32 model's, and an augmented one's largest difference
    from the fp32 model's maps of the same stage configuration, both explaining the fp32 model's classes (fed as
    rcam/target). One session at a time."""
    photos = photo_batch(subject)
    feeds = {subject.input_name: photos}

    def outputs(variant: Variant, extra: dict | None = None) -> dict[str, np.ndarray]:
        session = open_sessions([variant], threads)[variant.name]
        return named(session, session.run(None, feeds | (extra or {})))

    fp32 = {variant.configuration: outputs(variant) for variant in fp32_variants}
    classes = predicted(fp32["plain"])
    target = {"rcam/target": classes.astype(np.int64)}
    compared = {}
    for variant in form_variants:
        if variant.configuration == "plain":
            ours = outputs(variant)
            compared[variant.name] = {"classes_differing_vs_fp32": int((predicted(ours) != classes).sum()),
                                      "photos": len(photos)}
            continue
        # In layer order: quant_pre_process may have renamed the tensors that the layers resolve to.
        ours, theirs = ([value for name, value in maps.items() if name.endswith("/map")]
                        for maps in (outputs(variant, target), fp32[variant.configuration]))
        compared[variant.name] = {"max_map_difference_vs_fp32": max(float(np.abs(a - b).max())
                                                                    for a, b in zip(ours, theirs, strict=True)),
                                  "photos": len(photos)}
    return compared


def benchmark_form(subject: Subject, variants: list[Variant], fp32_plain: Variant, batch: int, feeds: dict,
                   floors: dict, fidelity: dict[str, dict], args) -> list[dict]:
    """The plain and augmented variants of one deployed form, taking turns with the fp32 plain model."""
    sessions = open_sessions([fp32_plain, *variants], args.threads)
    runners = session_runners(sessions, feeds, batch)
    for run in runners.values():  # warm-up
        run()
    print(f"{subject.name} batch {batch}: timing {len(runners)} runners of the {variants[0].form} form, "
          f"{args.repeats} turns", flush=True)
    times = interleaved_times(runners, args.repeats)
    del sessions, runners
    gc.collect()

    rows = []
    for variant in variants:
        print(f"{subject.name} batch {batch}: memory of {variant.name}", flush=True)
        rows.append(variant_row(subject, variant, batch, times, floors[variant.name], args.threads)
                    | fidelity[variant.name])
    set_memory_vs_plain(rows)
    return rows


def set_memory_vs_plain(rows: list[dict]) -> None:
    """Each row's peak memory added against its form's plain model (the first row), and the progress lines."""
    for row in rows:
        row["memory_vs_plain"] = row["memory"]["added_mib"] / rows[0]["memory"]["added_mib"]
        print(progress_line(row), flush=True)


def progress_line(row: dict) -> str:
    line = (f"{row['model']:18s} batch {row['batch']:2d}  {form_label(row):24s} {row['configuration']:11s} "
            f"{row['median_ms']:9.1f} ms {row['vs_plain']:5.2f}x plain  floor {row['floor_ratio']:5.2f}x  "
            f"vs floor {row['vs_floor']:4.2f}  +{row['memory']['added_mib']:7.1f} MiB")
    if row.get("form", "fp32") != "fp32":
        line += f"  {row['vs_fp32_plain']:5.2f}x fp32 plain"
        if "classes_differing_vs_fp32" in row:
            line += f"  classes differing from fp32 {row['classes_differing_vs_fp32']}/{row['photos']}"
        if "max_map_difference_vs_fp32" in row:
            line += f"  max map diff vs fp32 {row['max_map_difference_vs_fp32']:.1e}"
    if "torch_median_ms" in row:
        line += f"  torch {row['torch_median_ms']:9.1f} ms (onnxruntime {row['speedup_vs_torch']:.1f}x faster)"
    return line


def form_label(row: dict) -> str:
    """fp32 for the float32 model's rows (and those of speed.json files from before the forms), else e.g.
    `fp16` for the plain fp16 model and `fp16 (fp16 backward)` for one augmented with precision fp16."""
    form = row.get("form", "fp32")
    if form == "fp32":
        return "fp32"
    label = FORMS[form].label if form in FORMS else form
    return label if row["backward"] is None else f"{label} ({row['backward']} backward)"


def evaluate_targets(rows: list[dict]) -> list[dict]:
    results = []
    for label, applies, key, passes in TARGETS:  # the targets are the float32 model's
        checked = [r for r in rows if r.get("form", "fp32") == "fp32" and applies(r)]
        for row in checked:
            row.setdefault("targets", {})[key] = passes(row[key])
        results.append({"target": label, "rows": len(checked), "met": sum(passes(r[key]) for r in checked)})
    return results


def cell(row: dict, key: str, text: str) -> str:
    verdict = row.get("targets", {}).get(key)
    return text if verdict is None else f"{text} ({'met' if verdict else 'not met'})"


def markdown(report: dict, command: str) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [f"# Speed: augmented vs plain vs PyTorch ({'quick check' if settings['quick'] else 'CPU'})", "",
             f"`{command}` on {machine['cpu']} ({machine['cores']} cores), {machine['date']}: onnxruntime "
             f"{machine['onnxruntime']} CPU provider with {machine['onnxruntime_intra_op_threads']} intra-op threads, "
             f"torch {machine['torch']} with {machine['torch_threads']} threads. Median of {settings['repeats']} "
             "interleaved turns (untimed runs for 50 ms, then one timed run, each) after one warm-up; from batch "
             f"{SHRINK_FROM_BATCH} on, each onnxruntime run returns its memory arena when it ends, so that the "
             "sessions fit in memory side by side (plain and augmented alike). Peak memory: "
             "what one fresh process adds to its resident memory by creating the session (or torch model) and "
             "running one batch.", "",
             "Columns: time ratio augmented / plain; FLOP floor = (forward + generated FLOPs) / forward FLOPs; "
             "vs floor = time ratio / FLOP floor; torch = the same maps by torch autograd in eager mode (set up "
             "once); speed-up = torch time / onnxruntime time; max map diff vs torch = max |onnxruntime - torch| of "
             "the maps (in [0, 1]) on the warm-up batch.", ""]
    forms = {form: made for summary in report["models"].values() for form, made in summary.get("forms", {}).items()}
    if forms:
        models = ", ".join(name for name, summary in report["models"].items() if "forms" in summary)
        lines += [f"Deployed forms of {models}, each plain and augmented with the same stage configurations, in "
                  "the same table under their form:"]
        lines += [f"- {FORMS[form].label if form in FORMS else form}: {made['made_by']}; augmented with "
                  + " and with ".join(f"precision=\"{b}\" ({b} backward)" for b in made["backwards"])
                  for form, made in forms.items()]
        lines += ["", "For these rows: vs plain = against the same form's plain model; vs fp32 plain = against the "
                  "float32 plain model, which takes turns with each form's sessions; FLOP floor from the form's own "
                  "graphs; vs fp32 on photos = on the bundled photos (not mirrored; the int8 form was calibrated "
                  "on their mirror images), for a plain model the photos whose predicted class differs from the "
                  "fp32 model's, for an augmented one max |form - fp32| of the maps (in [0, 1]) of the classes "
                  "that the fp32 model predicted (fed as rcam/target); peak memory against the form's plain model. "
                  "The targets below are the float32 model's.", ""]
    if machine["other_processes_cores"] > BUSY_CORES:
        lines += [f"**Other processes competed for the cores**: they used {machine['other_processes_cores']:.2f} "
                  f"of the {machine['cores']} cores on average during the run, so the times are unreliable.", ""]
    lines += ["## Targets", ""]
    for target in report["targets"]:
        verdict = "met" if target["met"] == target["rows"] else "not met"
        lines.append(f"- {target['target']}: {verdict} (met in {target['met']} of {target['rows']} rows)"
                     if target["rows"] else f"- {target['target']}: not measured in this run")
    for name, summary in report["models"].items():
        width = f", width {summary['width']:g}" if summary["width"] != 1.0 else ""
        lines += ["", f"## {name}{width}", "",
                  "| batch | form | configuration | ms | vs plain | vs fp32 plain | FLOP floor | vs floor | torch ms "
                  "| speed-up vs torch | max map diff vs torch | vs fp32 on photos "
                  "| peak MiB added | vs plain memory | torch peak MiB added |",
                  "| ---: | --- | --- " + "| ---: " * 12 + "|"]
        for r in (r for r in report["rows"] if r["model"] == name):
            torch_cells = ([f"{r['torch_median_ms']:.1f}", cell(r, "speedup_vs_torch", f"{r['speedup_vs_torch']:.1f}x"),
                            f"{r['max_map_difference_vs_torch']:.1e}"] if "torch_median_ms" in r else ["", "", ""])
            versus_fp32 = (f"{r['classes_differing_vs_fp32']}/{r['photos']} classes" if "classes_differing_vs_fp32" in r
                           else f"{r['max_map_difference_vs_fp32']:.1e}" if "max_map_difference_vs_fp32" in r else "")
            lines.append("| " + " | ".join([
                str(r["batch"]), form_label(r),
                f"{r['configuration']} ({', '.join(r['layers'])})" if r["layers"] else "plain",
                f"{r['median_ms']:.1f}", cell(r, "vs_plain", f"{r['vs_plain']:.2f}x"),
                f"{r.get('vs_fp32_plain', r['vs_plain']):.2f}x", f"{r['floor_ratio']:.2f}x",
                cell(r, "vs_floor", f"{r['vs_floor']:.2f}"), *torch_cells, versus_fp32,
                f"{r['memory']['added_mib']:.0f}",
                cell(r, "memory_vs_plain", f"{r['memory_vs_plain']:.2f}x"),
                f"{r['torch_memory']['added_mib']:.0f}" if "torch_memory" in r else ""]) + " |")
    return "\n".join(lines) + "\n"


def export_only(folder: Path, names: list[str], width: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = model_file(SUBJECTS[name], folder, width if SUBJECTS[name].zoo_builder else 1.0)
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 3 repeats, 1/8-width zoo models")
    parser.add_argument("--models", nargs="+", choices=list(SUBJECTS), default=list(SUBJECTS))
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--width", type=float, help="channel width of ResNet50 and VGG16 (1 = the real size)")
    parser.add_argument("--forms", nargs="+", choices=[*FORMS, "none"], default=list(FORMS),
                        help=f"deployed forms of {' and '.join(FORM_MODELS)} to measure too (default: all; none)")
    parser.add_argument("--output", help="file stem in benchmarks/ (default speed, or speed-quick with --quick)")
    parser.add_argument("--export-only", type=Path, metavar="DIR",
                        help="write the plain ONNX models into DIR (for cuda_check.py --models-dir) and stop")
    args = parser.parse_args()
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.output = args.output or ("speed-quick" if args.quick else "speed")
    args.forms = [form for form in dict.fromkeys(args.forms) if form != "none"]
    return args


def main() -> None:
    args = parse_args()
    if args.export_only:
        export_only(args.export_only, args.models, args.width)
        return
    import torch

    torch.set_num_threads(args.threads)
    others = OtherProcessesCpu()
    report = {"machine": machine_info(args.threads),
              "settings": {"quick": args.quick, "batches": args.batches, "repeats": args.repeats,
                           "threads": args.threads, "width": args.width, "forms": args.forms},
              "models": {}, "rows": []}
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            report["models"][name], rows = benchmark_subject(SUBJECTS[name], Path(folder), args)
            report["rows"] += rows
            write(report, others, args.output, command.strip())  # after each model: a crash keeps what ran
    print(f"wrote {HERE / args.output}.json and .md")


def write(report: dict, others: OtherProcessesCpu, output: str, command: str) -> None:
    report["machine"]["other_processes_cores"] = round(others.cores(), 2)
    report["targets"] = evaluate_targets(report["rows"])
    (HERE / f"{output}.json").write_text(json.dumps(report, indent=1) + "\n")
    (HERE / f"{output}.md").write_text(markdown(report, command))


if __name__ == "__main__":
    main()
