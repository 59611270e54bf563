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
import zlib
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
# Control maps that know nothing of the model: what a metric gives a map that explains nothing.
CONTROLS = ("random", "centre")
METRICS = {  # column -> (title, better); {p}: the binarised columns' top percent
    "average_drop": ("Average Drop (%)", "lower"),
    "increase_in_confidence": ("Increase in Confidence (%)", "higher"),
    "binarised_average_drop": ("Average Drop, top {p}% binarised (%)", "lower"),
    "binarised_increase_in_confidence": ("Increase in Confidence, top {p}% binarised (%)", "higher"),
    "deletion_auc": ("Deletion AUC", "lower"),
    "insertion_auc": ("Insertion AUC", "higher"),
    "pointing_game": ("Pointing game (%)", "higher"),
    "energy_pointing_game": ("Energy-based pointing game (%)", "higher"),
}
PERCENT_COLUMNS = {"average_drop", "increase_in_confidence", "binarised_average_drop",
                   "binarised_increase_in_confidence", "pointing_game", "energy_pointing_game"}


def metric_titles(top_percent: float) -> dict[str, tuple[str, str]]:
    return {column: (title.format(p=f"{top_percent:g}"), better) for column, (title, better) in METRICS.items()}


@dataclass
class Tally:
    """What one method at one layer accumulates over the images, one entry per image (NaN: no boxes)."""

    full: list = field(default_factory=list)
    masked: list = field(default_factory=list)
    masked_top: list = field(default_factory=list)
    deletion: list = field(default_factory=list)
    insertion: list = field(default_factory=list)
    hits: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    coverage: list = field(default_factory=list)

    def per_image(self) -> dict[str, np.ndarray]:
        """Each metric column's per-image values, whose mean the column reports."""
        full = np.array(self.full)
        return {"average_drop": metrics.drops(full, np.array(self.masked)),
                "increase_in_confidence": metrics.increases(full, np.array(self.masked)),
                "binarised_average_drop": metrics.drops(full, np.array(self.masked_top)),
                "binarised_increase_in_confidence": metrics.increases(full, np.array(self.masked_top)),
                "deletion_auc": np.array(self.deletion), "insertion_auc": np.array(self.insertion),
                "pointing_game": np.array(self.hits, np.float64) * 100,
                "energy_pointing_game": np.array(self.energy) * 100}

    def row(self, method: str, layer: str, depth: int, top_percent: float) -> dict:
        row = {"method": method, "layer": layer, "depth": depth, "images": len(self.full)}
        values = self.per_image()
        for column in METRICS:
            row.update(summarise(column, values[column]))
        return {**row, "boxed_images": int(np.count_nonzero(~np.isnan(values["pointing_game"]))),
                "map_mean": float(np.mean(self.coverage)), "top_percent": top_percent}


def summarise(column: str, values: np.ndarray, photos=None) -> dict:
    """The column's mean over the values that are not NaN and its bootstrap 95 % interval over photos."""
    low, high = metrics.bootstrap_interval(values, photos)
    return {column: metrics.known_mean(values), f"{column}_low": low, f"{column}_high": high}


TALLY_FIELDS = tuple(f.name for f in fields(Tally))


@dataclass
class Evaluation:
    rows: list[dict]
    skipped: list[str]   # unreadable images, with the reason
    images: list[str] = field(default_factory=list)   # the images measured, in order
    per_image: dict = field(default_factory=dict)     # (method, layer) -> column -> values over `images`


def evaluate(model, images: list[Path], methods=("rcam",), layers=("auto",), boxes: dict[str, list[Box]] | None = None,
             batch_size: int = 8, steps: int = 32, mask_batch: int = 32, device: str = "auto", preprocessing=None,
             progress: Callable[[int], None] | None = None, relu: bool = False, input_shape=None,
             composite="rcam", initial: str = "contrastive", fuse: bool = False,
             top_percent: float = metrics.TOP_PERCENT, measure=None) -> Evaluation:
    """Metric rows per method and layer, in the order given (give layers shallow to deep: `depth` is that order).
    progress: called with the number of images after each batch. relu: clip rcam's raw map at 0, as the Grad-CAM
    family does. composite, initial: the relevance methods' rules and initial relevance, as for augment(). fuse: also
    each in-graph method's map fused over the layers (augment's fuse), as a row of layer `fused` after the others.
    top_percent: the share of each map's pixels that the binarised Average Drop and Increase in Confidence keep.
    measure: the layer keys to measure, of the layers and `fused` [default: all of them]; `depth` stays the key's
    place among all of them."""
    evaluator = Evaluator(model, methods, layers, boxes, steps, mask_batch, device, preprocessing, relu, input_shape,
                          composite=composite, initial=initial, fuse=fuse, top_percent=top_percent, measure=measure)
    tallies, skipped, read = evaluator.empty_tallies(), [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        measured, unreadable, names = evaluator.measure(batch, load_image)
        add_tallies(tallies, measured)
        skipped += unreadable
        read += names
        if progress:
            progress(len(batch))
    return evaluator.evaluation(tallies, skipped, read)


class Evaluator:
    """The explainers, the scorer and the settings of one evaluation; measure() tallies one batch of images. One per
    run of `evaluate`, and one per worker of onnx_rcam.distributed, whose tallies the driver adds up.

    model: as for Explainer; plain: the plain model where `model` was augmented already (it scores the images and
    runs Score-CAM) [default: model itself]. threads: onnxruntime's threads per session [default: one per core].
    composite, initial, fuse, top_percent, measure: as for evaluate()."""

    def __init__(self, model, methods=("rcam",), layers=("auto",), boxes: dict[str, list[Box]] | None = None,
                 steps: int = 32, mask_batch: int = 32, device: str = "auto", preprocessing=None, relu: bool = False,
                 input_shape=None, plain=None, threads: int | None = None, composite="rcam",
                 initial: str = "contrastive", fuse: bool = False, top_percent: float = metrics.TOP_PERCENT,
                 measure=None):
        self.methods = list(dict.fromkeys(methods))
        graph_methods = [m for m in self.methods if m != SCORE_CAM and m not in CONTROLS]
        in_graph = [m.name for m in resolve_methods(graph_methods)] if graph_methods else []
        if not in_graph and SCORE_CAM not in self.methods:
            in_graph = ["rcam"]  # the controls alone: the augmented model's run still gives the explained classes
        if steps < 2:
            raise RcamError(f"steps must be at least 2, got {steps}")
        if not 0 < top_percent <= 100:
            raise RcamError(f"top_percent must be in (0, 100], got {top_percent}")
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
        self.every_key = explained + [FUSED_KEY] if fused else explained  # the layers, then the fused maps
        self.measured = [key for key in self.every_key if measure is None or key in measure]
        # Score-CAM already holds a session of the plain model: one serves both.
        scored = load(plain)
        self.scorer = Scorer(scored, self.explainers[SCORE_CAM].scorer if SCORE_CAM in self.explainers
                             else _session(scored, device, threads)[0])
        self.boxes, self.steps, self.top_percent = boxes, steps, top_percent

    def empty_tallies(self) -> dict[tuple[str, str], Tally]:
        return {(m, layer): Tally() for m in self.methods for layer in self.measured}

    def measure(self, batch: list, read: Callable[[object], object]) \
            -> tuple[dict[tuple[str, str], Tally], list[str], list[str]]:
        """The tallies of one batch of images, the reasons for those that could not be read, and the names of those
        measured. read(image) reads one picture, raising RcamError where it cannot."""
        tallies, skipped, pictures, names = self.empty_tallies(), [], [], []
        for path in batch:
            try:
                pictures.append(read(path))
                names.append(PurePath(path).name)
            except RcamError as exc:
                skipped.append(str(exc))
        if pictures:
            x = self.first.prepare(pictures)
            maps, classes = _maps(self.explainers, x, self.methods, self.measured, names)
            _measure(self.scorer, x, maps, classes, pictures, names, self.boxes, tallies, self.first, self.steps,
                     self.top_percent)
        return tallies, skipped, names

    def evaluation(self, tallies: dict[tuple[str, str], Tally], skipped: list[str], read: list[str]) -> Evaluation:
        """The metric rows of the tallies over every image (`read`, their names in order)."""
        if not read:
            raise RcamError("no image could be read")
        rows = [tallies[m, layer].row(m, layer, self.every_key.index(layer), self.top_percent)
                for m in self.methods for layer in self.measured]
        return Evaluation(rows, skipped, read, {key: tally.per_image() for key, tally in tallies.items()})


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
    photos = []  # the image of each detection, for the bootstrap over images
    skipped, read = [], 0
    for start in range(0, len(images), batch_size):
        pictures = []
        for path in images[start:start + batch_size]:
            try:
                pictures.append(load_image(path))
            except RcamError as exc:
                skipped.append(str(exc))
        if pictures:
            explanation = explainer(pictures, outputs=True)
            photos += [read + n for n, found in enumerate(explanation.detections) for _ in found.boxes]
            read += len(pictures)
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
        row = {"method": method, "layer": layer, "depth": explainer.layers.index(layer), "images": read}
        for column in METRICS:
            row.update(summarise(column, np.full(len(found), math.nan)))
        row.update(summarise("pointing_game", np.array(found, np.float64) * 100, photos))
        row.update(summarise("energy_pointing_game", np.array(energy[method, layer]) * 100, photos))
        rows.append({**row, "boxed_images": 0, "detections": len(found),
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


def _maps(explainers, x, methods, keys, names):
    """(method, layer) -> maps [N, H, W], and the explained classes (the predictions)."""
    maps, classes = {}, None
    if "graph" in explainers:
        out = explainers["graph"].run(x)
        classes = out[CLASS_OUTPUT]
        maps.update({(m, layer): out[f"{m}/{layer}/map"] for m in methods if m != SCORE_CAM and m not in CONTROLS
                     for layer in keys})
    if SCORE_CAM in explainers:
        explanation = explainers[SCORE_CAM](x, targets=classes)
        classes = explanation.classes
        maps.update({(SCORE_CAM, layer): explanation.maps[layer] for layer in keys})
    size = x.shape[1:3] if explainers.get("graph", explainers.get(SCORE_CAM)).preprocessing.layout == "NHWC" \
        else x.shape[2:4]
    for control in (m for m in methods if m in CONTROLS):
        heat = np.stack([control_map(control, name, size) for name in names])
        maps.update({(control, layer): heat for layer in keys})
    return maps, np.asarray(classes)


def control_map(control: str, name: str, size) -> np.ndarray:
    """`random`: uniform noise in [0, 1], seeded by the image's name (the same map whatever the order or batch);
    `centre`: a Gaussian at the image's centre, sigma a quarter of its shorter side, peak 1."""
    if control == "random":
        return np.random.default_rng(zlib.crc32(name.encode())).random(size, dtype=np.float32)
    rows, cols = np.arange(size[0]) + 0.5 - size[0] / 2, np.arange(size[1]) + 0.5 - size[1] / 2
    sigma = min(size) / 4
    return np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _measure(scorer, x, maps, classes, pictures, names, boxes, tallies, explainer, steps, top_percent):
    channels_last = explainer.preprocessing.layout == "NHWC"
    full = scorer(x, classes)
    size = x.shape[1:3] if channels_last else x.shape[2:4]
    framed = [to_input_frame(boxes[name], explainer.preprocessing.crop_box(*picture.size), size)
              if boxes and name in boxes else None for name, picture in zip(names, pictures)]
    blurred = np.stack([metrics.gaussian_blur(image, channels_last=channels_last) for image in x])
    # Every map's deletion ends at the baseline and its insertion starts at the blurred image: scored once.
    emptied, blurred_scores = scorer(np.zeros_like(x), classes), scorer(blurred, classes)
    for key, heat in maps.items():
        tally = tallies[key]
        spread = heat[..., None] if channels_last else heat[:, None]
        top = np.stack([metrics.top_mask(saliency, top_percent) for saliency in heat])
        top = top[..., None] if channels_last else top[:, None]
        tally.full += list(full)
        tally.coverage += list(heat.mean(axis=(1, 2)))
        masked = scorer(np.concatenate([x * spread, x * top]), np.concatenate([classes, classes]))
        tally.masked += list(masked[:len(x)])
        tally.masked_top += list(masked[len(x):])
        for n, image in enumerate(x):
            # the steps - 1 images between the ends of deletion, then of insertion, in one run
            between = np.concatenate([
                metrics.perturbation_series(image, image, np.zeros_like(image), heat[n], steps, channels_last)[1:-1],
                metrics.perturbation_series(image, blurred[n], image, heat[n], steps, channels_last)[1:-1]])
            scores = scorer(between, np.full(len(between), classes[n]))
            tally.deletion.append(metrics.area_under_curve([full[n], *scores[:steps - 1], emptied[n]]))
            tally.insertion.append(metrics.area_under_curve([blurred_scores[n], *scores[steps - 1:], full[n]]))
            boxed = framed[n] is not None
            tally.hits.append(metrics.pointing_hit(heat[n], framed[n]) if boxed else math.nan)
            tally.energy.append(metrics.energy_in_boxes(heat[n], framed[n]) if boxed else math.nan)


def write_results(evaluation: Evaluation, outdir: Path, title: str) -> list[Path]:
    """results.md, results.csv, metrics.png and index.html (the table and the plot, for a browser) in outdir, and
    per_image.csv where the evaluation kept each image's values; returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    rows = evaluation.rows
    titles = metric_titles(rows[0].get("top_percent", metrics.TOP_PERCENT))
    intervals = [name for column in METRICS for name in (column, f"{column}_low", f"{column}_high")]
    columns = ["method", "layer", "depth", "images", *intervals, "boxed_images", "map_mean"]
    columns += [c for c in ("top_percent", "detections") if c in rows[0]]
    with (outdir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in METRICS if not all(math.isnan(r[c]) for r in rows)]
    lines = [f"# {title}", "",
             " | ".join(["| method", "layer"] + [f"{titles[c][0]} ({titles[c][1]} is better)" for c in shown]
                        + ["mean map value"]) + " |", "|" + " --- |" * 2 + " ---: |" * (len(shown) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([r["method"], f"`{r['layer']}`"] + [format_interval(r, c) for c in shown]
                                       + [f"{r['map_mean']:.3f}"]) + " |")
    lines.append("")
    if "detections" in rows[0]:
        lines += [f"{rows[0]['images']} images, {rows[0]['detections']} detections explained: the pointing "
                  "game asks whether a detection's map has its maximum inside the detection's box; the energy-based "
                  "one, what share of the map lies inside it.", ""]
    else:
        lines += [f"{rows[0]['images']} images" + (f", {rows[0]['boxed_images']} with boxes"
                                                   if rows[0]["boxed_images"] else "") + ". The mean map value "
                  "is context for the soft Average Drop and Increase in Confidence: a map nearer all ones keeps more "
                  f"of the image. The binarised ones keep each map's top {rows[0]['top_percent']:g}% of pixels "
                  "whatever its values.", ""]
    lines += [f"In brackets: 95% intervals, a percentile bootstrap over the images ({metrics.BOOTSTRAP_RESAMPLES} "
              f"resamples, seed {metrics.BOOTSTRAP_SEED}, the same images drawn for every row).", ""]
    if evaluation.skipped:
        lines += ["Skipped:", *[f"- {reason}" for reason in evaluation.skipped], ""]
    (outdir / "results.md").write_text("\n".join(lines))
    written = [outdir / "results.md", outdir / "results.csv"]
    if evaluation.per_image:
        written.append(_write_per_image(evaluation, outdir / "per_image.csv"))
    _plot(rows, shown, titles, outdir / "metrics.png")
    index = evaluate_index(outdir, title, rows, {c: titles[c] for c in shown},
                           [line for line in lines[len(rows) + 4:] if not line.startswith("- ")], "metrics.png",
                           format_interval)
    return [*written, outdir / "metrics.png", index]


def format_interval(row: dict, column: str) -> str:
    """`mean [low, high]`, two decimals for percentages, three for AUCs."""
    digits = 2 if column in PERCENT_COLUMNS else 3
    values = [row[column], row[f"{column}_low"], row[f"{column}_high"]]
    if math.isnan(values[0]):
        return "n/a"
    mean, low, high = (f"{v:.{digits}f}" for v in values)
    return f"{mean} [{low}, {high}]"


def _write_per_image(evaluation: Evaluation, path: Path) -> Path:
    """One line per image, method and layer with that image's value of every metric (NaN: no boxes): what paired
    comparisons between methods start from."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "method", "layer", *METRICS])
        for (method, layer), values in evaluation.per_image.items():
            for n, image in enumerate(evaluation.images):
                writer.writerow([image, method, layer, *(float(values[c][n]) for c in METRICS)])
    return path


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


def _plot(rows: list[dict], shown: list[str], titles: dict, path: Path) -> None:
    plotting = pyplot()

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    columns = min(3, len(shown))
    figure, axes = plotting.subplots(math.ceil(len(shown) / columns), columns, squeeze=False,
                                   figsize=(4.5 * columns, 3.4 * math.ceil(len(shown) / columns)))
    for axis, column in zip(axes.ravel(), shown):
        for method in dict.fromkeys(r["method"] for r in rows):
            chosen = [next(r for r in rows if r["method"] == method and r["layer"] == layer) for layer in layers]
            values = np.array([r[column] for r in chosen])
            spread = np.abs(np.array([[r[f"{column}_low"] for r in chosen], [r[f"{column}_high"] for r in chosen]])
                            - values)
            axis.errorbar(range(len(layers)), values, yerr=spread, marker="o", capsize=2, label=method)
        axis.set_title(f"{titles[column][0]}\n({titles[column][1]} is better)", fontsize=9)
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

