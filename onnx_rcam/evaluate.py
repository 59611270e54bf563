"""`onnx-rcam evaluate`: faithfulness and localisation of each method's maps at each layer (metrics.py), over a
folder of photos, with a markdown table, a CSV and a plot of each metric against depth.

The explained class is each image's prediction. Scores are the model's class probabilities (softmax of the
logits; the model's own output where it ends in a Softmax). Masks and baselines act on the prepared input: the
image multiplied by a map is the normalised tensor times the map, the deletion baseline is 0 there (the
preprocessing's mean colour), the insertion baseline the image blurred (metrics.gaussian_blur).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath

import numpy as np

from . import metrics
from .boxes import Box, to_input_frame
from .errors import RcamError
from .explainer import Explainer, _session, run_batched
from .heads import FUSED_KEY, resolve_methods
from .images import load_image
from .initial import CLASS_OUTPUT
from .load import load
from .report import evaluate_index
from .scorecam import ScoreCamExplainer

SCORE_CAM = "scorecam"
METRICS = {  # column -> (title, better)
    "average_drop": ("Average Drop (%)", "lower"),
    "increase_in_confidence": ("Increase in Confidence (%)", "higher"),
    "deletion_auc": ("Deletion AUC", "lower"),
    "insertion_auc": ("Insertion AUC", "higher"),
    "pointing_game": ("Pointing game (%)", "higher"),
    "energy_pointing_game": ("Energy-based pointing game (%)", "higher"),
}


@dataclass
class Tally:
    """What one method at one layer accumulates over the images."""

    full: list = field(default_factory=list)
    masked: list = field(default_factory=list)
    deletion: list = field(default_factory=list)
    insertion: list = field(default_factory=list)
    hits: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    coverage: list = field(default_factory=list)

    def row(self, method: str, layer: str, depth: int) -> dict:
        full, masked = np.array(self.full), np.array(self.masked)
        return {"method": method, "layer": layer, "depth": depth, "images": len(full),
                "average_drop": metrics.average_drop(full, masked),
                "increase_in_confidence": metrics.increase_in_confidence(full, masked),
                "deletion_auc": float(np.mean(self.deletion)), "insertion_auc": float(np.mean(self.insertion)),
                "pointing_game": float(np.mean(self.hits) * 100) if self.hits else math.nan,
                "energy_pointing_game": float(np.mean(self.energy) * 100) if self.energy else math.nan,
                "boxed_images": len(self.hits), "map_mean": float(np.mean(self.coverage))}


TALLY_FIELDS = tuple(f.name for f in fields(Tally))


@dataclass
class Evaluation:
    rows: list[dict]
    skipped: list[str]   # unreadable images, with the reason


def evaluate(model, images: list[Path], methods=("rcam",), layers=("auto",), boxes: dict[str, list[Box]] | None = None,
             batch_size: int = 8, steps: int = 32, mask_batch: int = 32, device: str = "auto", preprocessing=None,
             progress: Callable[[int], None] | None = None, relu: bool = False, input_shape=None,
             composite="rcam", initial: str = "contrastive", fuse: bool = False) -> Evaluation:
    """Metric rows per method and layer, in the order given (give layers shallow to deep: `depth` is that order).
    progress: called with the number of images after each batch. relu: clip rcam's raw map at 0, as the Grad-CAM
    family does. composite, initial: the relevance methods' rules and initial relevance, as for augment(). fuse: also
    each in-graph method's map fused over the layers (augment's fuse), as a row of layer `fused` after the others."""
    evaluator = Evaluator(model, methods, layers, boxes, steps, mask_batch, device, preprocessing, relu, input_shape,
                          composite=composite, initial=initial, fuse=fuse)
    tallies, skipped = evaluator.empty_tallies(), []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        measured, unreadable = evaluator.measure(batch, load_image)
        add_tallies(tallies, measured)
        skipped += unreadable
        if progress:
            progress(len(batch))
    return evaluator.evaluation(tallies, skipped)


class Evaluator:
    """The explainers, the scorer and the settings of one evaluation; measure() tallies one batch of images. One per
    run of `evaluate`, and one per worker of onnx_rcam.distributed, whose tallies the driver adds up.

    model: as for Explainer; plain: the plain model where `model` was augmented already (it scores the images and
    runs Score-CAM) [default: model itself]. threads: onnxruntime's threads per session [default: one per core].
    composite, initial, fuse: as for evaluate()."""

    def __init__(self, model, methods=("rcam",), layers=("auto",), boxes: dict[str, list[Box]] | None = None,
                 steps: int = 32, mask_batch: int = 32, device: str = "auto", preprocessing=None, relu: bool = False,
                 input_shape=None, plain=None, threads: int | None = None, composite="rcam",
                 initial: str = "contrastive", fuse: bool = False):
        self.methods = list(dict.fromkeys(methods))
        graph_methods = [m for m in self.methods if m != SCORE_CAM]
        in_graph = [m.name for m in resolve_methods(graph_methods)] if graph_methods else []
        if steps < 2:
            raise RcamError(f"steps must be at least 2, got {steps}")
        plain = plain if plain is not None else model
        self.explainers = {}
        if in_graph:
            self.explainers["graph"] = Explainer(model, layers, device, preprocessing=preprocessing,
                                                 method=in_graph[0], also=in_graph[1:], relu=relu,
                                                 input_shape=input_shape, threads=threads, composite=composite,
                                                 initial=initial, fuse=fuse)
            _check_methods(self.explainers["graph"], in_graph)
        if SCORE_CAM in self.methods:
            self.explainers[SCORE_CAM] = ScoreCamExplainer(plain, layers, device, batch_size=mask_batch,
                                                           preprocessing=preprocessing, input_shape=input_shape,
                                                           threads=threads)
        self.first = next(iter(self.explainers.values()))
        fused = "graph" in self.explainers and self.explainers["graph"].fused
        if fused and SCORE_CAM in self.methods:
            raise RcamError("scorecam's maps are not fused: evaluate it without fuse")
        explained = self.first.layers
        self.measured = explained + [FUSED_KEY] if fused else explained  # the layers, then the fused maps
        # Score-CAM already holds a session of the plain model: one serves both.
        scored = load(plain)
        self.scorer = Scorer(scored, self.explainers[SCORE_CAM].scorer if SCORE_CAM in self.explainers
                             else _session(scored, device, threads)[0])
        self.boxes, self.steps = boxes, steps

    def empty_tallies(self) -> dict[tuple[str, str], Tally]:
        return {(m, layer): Tally() for m in self.methods for layer in self.measured}

    def measure(self, batch: list, read: Callable[[object], object]) -> tuple[dict[tuple[str, str], Tally], list[str]]:
        """The tallies of one batch of images, and the reasons for those that could not be read. read(image) reads
        one picture, raising RcamError where it cannot."""
        tallies, skipped, pictures, names = self.empty_tallies(), [], [], []
        for path in batch:
            try:
                pictures.append(read(path))
                names.append(PurePath(path).name)
            except RcamError as exc:
                skipped.append(str(exc))
        if pictures:
            x = self.first.prepare(pictures)
            maps, classes = _maps(self.explainers, x, self.methods, self.measured)
            _measure(self.scorer, x, maps, classes, pictures, names, self.boxes, tallies, self.first, self.steps)
        return tallies, skipped

    def evaluation(self, tallies: dict[tuple[str, str], Tally], skipped: list[str]) -> Evaluation:
        """The metric rows of the tallies over every image."""
        if not any(t.full for t in tallies.values()):
            raise RcamError("no image could be read")
        rows = [tallies[m, layer].row(m, layer, depth) for m in self.methods for depth, layer in
                enumerate(self.measured)]
        return Evaluation(rows, skipped)


def add_tallies(into: dict[tuple[str, str], Tally], batch: dict[tuple[str, str], Tally]) -> None:
    """Append a batch's tallies, in order: the driver adds the workers' batches in the images' order, so the means
    are those of one machine's run."""
    for key, tally in batch.items():
        for name in TALLY_FIELDS:
            getattr(into[key], name).extend(getattr(tally, name))


def evaluate_detections(model, images: list[Path], methods=("rcam",), layers=("auto",), batch_size: int = 8,
                        device: str = "auto", preprocessing=None, detections: int = 5, conf: float = 0.25,
                        iou: float = 0.45, layout: str = "auto", scores: str | None = None,
                        progress: Callable[[int], None] | None = None, input_shape=None) -> Evaluation:
    """The per-detection pointing game of a detector (--task detect): for each of the best `detections`
    detections of each image, whether its map's maximum lies inside its box, and the share of its map's sum inside
    it (the energy-based pointing game); rows per method and layer as evaluate's, the other metrics NaN."""
    methods = list(dict.fromkeys(methods))
    if SCORE_CAM in methods:
        raise RcamError("scorecam explains classifiers only")
    names = [m.name for m in resolve_methods(methods)]
    explainer = Explainer(model, layers, device, preprocessing=preprocessing, method=names[0], also=names[1:],
                          task="detect", scores=scores, detections=detections, conf=conf, iou=iou, layout=layout,
                          input_shape=input_shape)
    _check_methods(explainer, names)
    hits = {(m, layer): [] for m in names for layer in explainer.layers}
    energy = {key: [] for key in hits}
    coverage = {key: [] for key in hits}
    skipped, read = [], 0
    for start in range(0, len(images), batch_size):
        pictures = []
        for path in images[start:start + batch_size]:
            try:
                pictures.append(load_image(path))
            except RcamError as exc:
                skipped.append(str(exc))
        if pictures:
            read += len(pictures)
            explanation = explainer(pictures, outputs=True)
            for (method, layer), found in hits.items():
                maps = explanation.outputs[f"{method}/{layer}/map"]
                for n, detections_of_image in enumerate(explanation.detections):
                    for k, box in enumerate(detections_of_image.boxes):
                        found.append(metrics.pointing_hit(maps[n, k], [box], tolerance=0))
                        energy[method, layer].append(metrics.energy_in_boxes(maps[n, k], [box]))
                        coverage[method, layer].append(float(maps[n, k].mean()))
        if progress:
            progress(len(images[start:start + batch_size]))
    if not read:
        raise RcamError("no image could be read")
    rows = []
    for (method, layer), found in hits.items():
        rows.append({"method": method, "layer": layer, "depth": explainer.layers.index(layer), "images": read,
                     **{column: math.nan for column in METRICS},
                     "pointing_game": float(np.mean(found) * 100) if found else math.nan,
                     "energy_pointing_game": float(np.mean(energy[method, layer]) * 100) if found else math.nan,
                     "boxed_images": 0, "detections": len(found),
                     "map_mean": float(np.mean(coverage[method, layer])) if found else math.nan})
    return Evaluation(rows, skipped)


def _check_methods(explainer: Explainer, methods: list[str]) -> None:
    """An already augmented model brings its own methods: each one asked for must be among them."""
    held = {name.split("/")[0] for name in (o.name for o in explainer.session.get_outputs()) if name.endswith("/map")}
    missing = [m for m in methods if m not in held]
    if missing:
        raise RcamError(f"the augmented model has no maps of {', '.join(missing)} (it holds {', '.join(sorted(held))}):"
                        f" ask for those (--method), or evaluate the plain model, which is augmented with every method")


class Scorer:
    """The plain model's class probabilities for batches of prepared images."""

    def __init__(self, proto, session):
        self.session = session
        self.input = self.session.get_inputs()[0].name
        output = proto.graph.output[0].name
        self.is_probability = any(n.op_type == "Softmax" and output in n.output for n in proto.graph.node)

    def __call__(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        scores = run_batched(self.session, {self.input: x.astype(np.float32)})[0].astype(np.float64)
        scores = scores.reshape(len(x), -1)
        if not self.is_probability:
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        return scores[np.arange(len(x)), classes]


def _maps(explainers, x, methods, keys):
    """(method, layer) -> maps [N, H, W], and the explained classes (the predictions)."""
    maps, classes = {}, None
    if "graph" in explainers:
        out = explainers["graph"].run(x)
        classes = out[CLASS_OUTPUT]
        maps.update({(m, layer): out[f"{m}/{layer}/map"] for m in methods if m != SCORE_CAM for layer in keys})
    if SCORE_CAM in explainers:
        explanation = explainers[SCORE_CAM](x, targets=classes)
        classes = explanation.classes
        maps.update({(SCORE_CAM, layer): explanation.maps[layer] for layer in keys})
    return maps, np.asarray(classes)


def _measure(scorer, x, maps, classes, pictures, names, boxes, tallies, explainer, steps):
    channels_last = explainer.preprocessing.layout == "NHWC"
    full = scorer(x, classes)
    size = x.shape[1:3] if channels_last else x.shape[2:4]
    framed = [to_input_frame(boxes[name], explainer.preprocessing.crop_box(*picture.size), size)
              if boxes and name in boxes else None for name, picture in zip(names, pictures)]
    blurred = [metrics.gaussian_blur(image, channels_last=channels_last) for image in x]
    for key, heat in maps.items():
        tally = tallies[key]
        spread = heat[..., None] if channels_last else heat[:, None]
        tally.full += list(full)
        tally.coverage += list(heat.mean(axis=(1, 2)))
        tally.masked += list(scorer(x * spread, classes))
        for n, image in enumerate(x):
            for series, start, end in ((tally.deletion, image, np.zeros_like(image)),
                                       (tally.insertion, blurred[n], image)):
                steps_images = metrics.perturbation_series(image, start, end, heat[n], steps, channels_last)
                curve = scorer(steps_images, np.full(len(steps_images), classes[n]))
                series.append(metrics.area_under_curve(curve))
            if framed[n] is not None:
                tally.hits.append(metrics.pointing_hit(heat[n], framed[n]))
                tally.energy.append(metrics.energy_in_boxes(heat[n], framed[n]))


def write_results(evaluation: Evaluation, outdir: Path, title: str) -> list[Path]:
    """results.md, results.csv, metrics.png and index.html (the table and the plot, for a browser) in outdir;
    returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    rows = evaluation.rows
    columns = ["method", "layer", "depth", "images", *METRICS, "boxed_images", "map_mean"]
    if "detections" in rows[0]:
        columns.insert(columns.index("boxed_images"), "detections")
    with (outdir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in METRICS if not all(math.isnan(r[c]) for r in rows)]
    lines = [f"# {title}", "",
             " | ".join(["| method", "layer"] + [f"{METRICS[c][0]} ({METRICS[c][1]} is better)" for c in shown]
                        + ["mean map value"]) + " |", "|" + " --- |" * 2 + " ---: |" * (len(shown) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([r["method"], f"`{r['layer']}`"] + [f"{r[c]:.2f}" if c.endswith("game")
                     or c in ("average_drop", "increase_in_confidence") else f"{r[c]:.3f}" for c in shown]
                                       + [f"{r['map_mean']:.3f}"]) + " |")
    if "detections" in rows[0]:
        lines += ["", f"{rows[0]['images']} images, {rows[0]['detections']} detections explained: the pointing "
                  "game asks whether a detection's map has its maximum inside the detection's box; the energy-based "
                  "one, what share of the map lies inside it.", ""]
    else:
        lines += ["", f"{rows[0]['images']} images" + (f", {rows[0]['boxed_images']} with boxes"
                                                       if rows[0]["boxed_images"] else "") + ". The mean map value "
                  "is context for Average Drop and Increase in Confidence: a map nearer all ones keeps more of the "
                  "image.", ""]
    if evaluation.skipped:
        lines += ["Skipped:", *[f"- {reason}" for reason in evaluation.skipped], ""]
    (outdir / "results.md").write_text("\n".join(lines))
    _plot(rows, shown, outdir / "metrics.png")
    index = evaluate_index(outdir, title, rows, METRICS, [line for line in lines[len(rows) + 3:]
                                                          if not line.startswith("- ")], "metrics.png")
    return [outdir / "results.md", outdir / "results.csv", outdir / "metrics.png", index]


def pyplot():
    """matplotlib's pyplot, drawing to files; a clear error where the [evaluate] extra is missing (the command
    asks before it starts measuring)."""
    try:
        import matplotlib
    except ImportError:
        raise RcamError("the plot needs matplotlib: pip install 'onnx-rcam[evaluate]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plotting
    return plotting


def _plot(rows: list[dict], shown: list[str], path: Path) -> None:
    plotting = pyplot()

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    columns = min(3, len(shown))
    figure, axes = plotting.subplots(math.ceil(len(shown) / columns), columns, squeeze=False,
                                   figsize=(4.5 * columns, 3.4 * math.ceil(len(shown) / columns)))
    for axis, column in zip(axes.ravel(), shown):
        for method in dict.fromkeys(r["method"] for r in rows):
            values = [next(r[column] for r in rows if r["method"] == method and r["layer"] == layer)
                      for layer in layers]
            axis.plot(range(len(layers)), values, marker="o", label=method)
        axis.set_title(f"{METRICS[column][0]}\n({METRICS[column][1]} is better)", fontsize=9)
        axis.set_xticks(range(len(layers)), [layer if len(layer) < 14 else "..." + layer[-11:] for layer in layers],
                        rotation=30, fontsize=7)
        axis.set_xlabel("layer, shallow to deep", fontsize=8)
    for axis in axes.ravel()[len(shown):]:
        axis.set_visible(False)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=110)
    plotting.close(figure)

