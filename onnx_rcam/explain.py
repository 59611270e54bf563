"""`onnx-rcam explain`: overlays, maps and a summary for any number of photos, streamed in batches."""

from __future__ import annotations

import ast
import csv
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .errors import RcamError
from .explainer import Explainer
from .heads import FUSED_KEY
from .images import load_image
from .metrics import pointing_hit
from .models_path import models_folder
from .overlay import draw_boxes, outline, overlay, side_by_side
from .report import explain_index

SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
PNG_OPTIONS = {"compress_level": 1}  # zlib's fastest level: PNG encoding was 70% of the run at the default 6


@dataclass
class RunSummary:
    images: int = 0
    failed: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed: int = 0                 # images explained by an earlier run, skipped (resume)
    interrupted: str | None = None   # the error that stopped the run part-way, if one did
    remaining: int = 0               # images not reached then

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def imagenet_labels() -> list[str]:
    return (models_folder() / "imagenet_classes.txt").read_text().splitlines()


def read_labels(path: Path | list[str] | None, classes: int, task: str = "classify", model=None) -> list[str]:
    """One label per line of a file (or the file's lines, read already: onnx_rcam.distributed reads it on the
    driver, where the path is); the class names a model carries in its metadata (ultralytics exports write
    `names`); the bundled ImageNet labels for 1000-class classifiers and COCO's for 80-class detectors; else the
    class numbers."""
    if path is not None:
        labels = path if isinstance(path, list) else Path(path).read_text().splitlines()
        if len(labels) < classes:
            raise RcamError(f"{'the labels' if isinstance(path, list) else path}: {len(labels)} labels for a model "
                            f"with {classes} classes")
        return labels
    carried = model_labels(model) if model is not None else None
    if carried is not None and len(carried) >= classes:
        return carried
    if classes == 1000 and task == "classify":
        return imagenet_labels()
    if classes == 80 and task == "detect":
        return (models_folder() / "coco_classes.txt").read_text().splitlines()
    return [str(c) for c in range(classes)]


def model_labels(model) -> list[str] | None:
    """The class names in a model's metadata: `names`, a dict of index to name as ultralytics writes it, or a
    list."""
    found = [e.value for e in model.metadata_props if e.key == "names"]
    try:
        names = ast.literal_eval(found[0]) if found else None
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        return [str(names.get(i, i)) for i in range(max(names) + 1)] if names else None
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def class_count(explainer: Explainer, explanation) -> int:
    """The number of classes the explained output scores."""
    if explainer.task == "detect":
        fields = explanation.logits.shape[2] if explainer.layout == "yolov5" else explanation.logits.shape[1]
        return fields - (5 if explainer.layout == "yolov5" else 4)
    return explanation.logits.shape[1]


def output_stem(image, folders: list) -> PurePath:
    """The image's path below the input folder it came from, without suffix: keeps same-named photos apart. image
    and folders are paths or URIs (s3://bucket/photos, for onnx_rcam.distributed), read as pure paths."""
    for folder in map(PurePath, folders):
        if PurePath(image).is_relative_to(folder):
            return PurePath(image).relative_to(folder).with_suffix("")
    return PurePath(PurePath(image).stem)


def input_folders(roots: list[Path]) -> list[Path]:
    """The inputs that are folders: an image's output files sit at its path below the folder it came from."""
    return [root for root in roots if root.is_dir()]


def check_output(outdir: Path, force: bool, resume: bool) -> None:
    """A folder with files is written into only when asked (force, or resume to continue the run that wrote it)."""
    if outdir.exists() and any(outdir.iterdir()) and not (force or resume):
        raise RcamError(f"{outdir} already holds files; pass --force (force=True) to write into it, or --resume "
                        "(resume=True) to continue the run that wrote them")


def split_done(images: list, folders: list, outdir: Path) -> tuple[list, list]:
    """(the images whose maps, NAME.npz, an earlier run wrote, the rest) for resume: the .npz is written last and
    atomically, so its presence means the image is done."""
    done = {str(image) for image in images if (outdir / f"{output_stem(image, folders)}.npz").is_file()}
    return [image for image in images if str(image) in done], [image for image in images if str(image) not in done]


def explain_images(explainer: Explainer, images: list[Path], roots: list[Path], outdir: Path, batch_size: int = 8,
                   target: int | None = None, top_k: int = 5, labels: Path | None = None,
                   progress: Callable[[int], None] | None = None,
                   region: Callable[[Image.Image], np.ndarray] | None = None, resume: bool = False) -> RunSummary:
    """Write per image an overlay per layer (and per explained class or detection), a sheet of all of them and the
    raw maps; per run summary.csv, summary.json and index.html (a page of them all, for a browser). Unreadable
    images are recorded and skipped. Memory stays flat: one batch of pictures is held at a time, and the summary
    keeps a few numbers per image. region (segment):
    the picture's region to explain, [H, W] booleans at input resolution, in place of the predicted pixels.

    A run that stops part-way (an error, Ctrl-C) still writes the summary of what it did, with the error and the
    number of images left, before the error propagates. resume: skip the images whose maps (NAME.npz) an earlier
    run wrote, keeping their rows from its summary.json."""
    outdir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    folders = input_folders(roots)
    if resume:
        earlier = _earlier_rows(outdir)
        done, images = split_done(images, folders, outdir)
        summary.rows = [earlier[str(path)] for path in done if str(path) in earlier]
        summary.resumed = len(done)
    explain_batch = BatchWriter(explainer, folders, outdir, target, top_k, labels, region)
    try:
        with timed_run(summary, len(images)):
            for batch in batches(images, batch_size):
                rows, failed = explain_batch(batch, load_image)
                summary.rows += rows
                summary.failed += failed
                summary.images += len(batch)
                if progress:
                    progress(len(batch))
    finally:
        _write_summary(outdir, summary, explainer)
    return summary


@contextmanager
def timed_run(summary, total: int):
    """Time a run into summary.seconds, and where it stops part-way (an error, Ctrl-C) record why and how many of
    its `total` images it did not reach (summary.images counts those it did), for the summary the caller writes."""
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        summary.interrupted = f"{type(exc).__name__}: {exc}"
        summary.remaining = total - summary.images
        raise
    finally:
        summary.seconds = time.perf_counter() - started


def _earlier_rows(outdir: Path) -> dict[str, dict]:
    """An earlier run's summary rows by image path (none where it wrote no summary.json)."""
    try:
        return {row["image"]: row for row in json.loads((outdir / SUMMARY_JSON).read_text())["results"]}
    except (OSError, ValueError, KeyError):
        return {}


class BatchWriter:
    """Explains a batch of images and writes each one's files (overlays, sheet, NAME.npz); returns the summary rows
    and the unreadable images. One per run of `explain`, and one per worker of onnx_rcam.distributed, so both write
    the same files. overlays=False writes the maps alone (classify only). also: more methods the explainer's model
    holds, whose maps and raw maps the .npz adds as METHOD.LAYER.map and METHOD.LAYER.raw."""

    def __init__(self, explainer: Explainer, folders: list, outdir: Path, target: int | None = None, top_k: int = 5,
                 labels: Path | list[str] | None = None,
                 region: Callable[[Image.Image], np.ndarray] | None = None, overlays: bool = True, also=()):
        self.explainer, self.folders, self.outdir, self.target, self.top_k = explainer, folders, outdir, target, top_k
        self.labels, self.region, self.overlays, self.also = labels, region, overlays, tuple(also)
        self.label_names: list[str] | None = None  # read from the first explanation, which tells the class count

    def __call__(self, batch: list, read: Callable[[object], Image.Image]) -> tuple[list[dict], list[dict]]:
        """batch: image paths (or URIs); read(image) reads one picture, raising RcamError where it cannot."""
        explainer = self.explainer
        pictures, readable, failed = [], [], []
        for path in batch:
            try:
                pictures.append(read(path))
                readable.append(path)
            except RcamError as exc:
                failed.append({"image": str(path), "error": str(exc)})
        rows = []
        if readable:
            targets = None if self.target is None else np.full(
                [len(readable)] + ([explainer.top_k] if explainer.top_k > 1 else []), self.target)
            explanation = explainer(pictures, targets=targets, extras=True, outputs=bool(self.also),
                                    regions=None if self.region is None else [self.region(p) for p in pictures])
            if self.label_names is None:
                self.label_names = read_labels(self.labels, class_count(explainer, explanation), explainer.task,
                                               explainer.model)
            for i, (path, picture) in enumerate(zip(readable, pictures)):
                stem = self.outdir / output_stem(path, self.folders)
                if explainer.task == "classify":
                    row = _write_image(explainer, explanation, i, path, picture, stem, self.label_names, self.top_k,
                                       self.overlays, self._other_maps(explanation, i))
                else:
                    write = _write_detections if explainer.task == "detect" else _write_segments
                    row = write(explainer, explanation, i, path, picture, stem, self.label_names, self.top_k)
                for written in row["pictures"]:  # relative to the output folder, as index.html links them
                    written["file"] = Path(written["file"]).relative_to(self.outdir).as_posix()
                rows.append(row)
        return rows, failed

    def _other_maps(self, explanation, i: int) -> dict[str, np.ndarray]:
        if not self.also:
            return {}
        parts = [(layer, part) for layer in self.explainer.layers for part in ("map", "raw")]
        if self.explainer.fused:  # a fused map has no raw map
            parts.append((FUSED_KEY, "map"))
        return {f"{method}.{_safe(layer)}.{part}": explanation.outputs[f"{method}/{layer}/{part}"][i]
                for method in self.also for layer, part in parts}


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _write_image(explainer: Explainer, explanation, i: int, path: Path, picture, stem: Path, labels: list[str],
                 top_k: int, overlays: bool = True, other_maps: dict[str, np.ndarray] | None = None) -> dict:
    stem.parent.mkdir(parents=True, exist_ok=True)
    classes = np.atleast_1d(explanation.classes[i])
    pictures = _classify_overlays(explainer, explanation, i, picture, stem, labels, classes) if overlays else []
    # explanation.maps holds the fused map too, where the model has one (it has no raw map)
    save_npz(stem, classes=classes,
             **{f"{_safe(layer)}.raw": explanation.raw[layer][i] for layer in explainer.layers},
             **{f"{_safe(layer)}.map": maps[i] for layer, maps in explanation.maps.items()}, **(other_maps or {}))
    scores = explanation.scores[i]
    best = np.argsort(-scores)[:top_k]
    return {"image": str(path), "explained": [int(c) for c in classes],
            "explained_labels": [labels[int(c)] for c in classes],
            "top": [{"class": int(c), "label": labels[int(c)], "score": round(float(scores[c]), 6)} for c in best],
            "pictures": pictures}


def _classify_overlays(explainer: Explainer, explanation, i: int, picture, stem: Path, labels: list[str],
                       classes: np.ndarray) -> list[dict]:
    """Per layer (and the fused map, where there is one) and explained class its map over the photo, and the sheet
    of all."""
    box = explainer.preprocessing.crop_box(picture.width, picture.height)
    shown = []
    for layer in explanation.maps:
        maps = explanation.maps[layer][i].reshape(len(classes), *explanation.maps[layer].shape[-2:])
        for rank, (heat, cls) in enumerate(zip(maps, classes)):
            suffix = "" if len(classes) == 1 else f".class{rank + 1}"
            shown.append((f"{_safe(layer)}{suffix}", overlay(picture, heat, box=box),
                          f"{explainer.title(layer)} | {labels[int(cls)].split(',')[0]}"))
    return _save_pictures(stem, [(None, picture, "photo")] + shown)


def save_npz(stem: Path, **arrays: np.ndarray) -> None:
    """STEM.npz, written under a temporary name and renamed: resume takes an .npz for a finished image, and a
    worker that Ray retries rewrites it whole, so no reader ever sees half a file."""
    target = stem.parent / f"{stem.name}.npz"
    partial = stem.parent / f".{stem.name}.npz.{os.getpid()}.partial"
    with open(partial, "wb") as stream:  # a stream: savez would append .npz to a name
        np.savez_compressed(stream, **arrays)
    os.replace(partial, target)


def _save_pictures(stem: Path, panels: list[tuple[str | None, Image.Image, str]]) -> list[dict]:
    """Save each panel with a name as STEM.NAME.png and all of them side by side as STEM.layers.png; the files
    written, with their titles (for summary.json and index.html)."""
    written = []
    for name, image, title in panels:
        if name is not None:
            target = stem.parent / f"{stem.name}.{name}.png"
            image.save(target, **PNG_OPTIONS)
            written.append({"file": str(target), "title": title})
    sheet = stem.parent / f"{stem.name}.layers.png"
    side_by_side([image for _, image, _ in panels], [title for _, _, title in panels]).save(sheet, **PNG_OPTIONS)
    return [{"file": str(sheet), "title": "all"}] + written


def _write_detections(explainer: Explainer, explanation, i: int, path: Path, picture, stem: Path,
                      labels: list[str], top_k: int) -> dict:
    """The photo with every explained detection's box, and per layer and detection its map with its box."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    found = explanation.detections[i]
    boxes = explainer.preprocessing.to_photo(found.boxes, picture.width, picture.height)
    captions = [f"{k + 1} {labels[int(c)]} {s:.2f}" for k, (c, s) in enumerate(zip(found.classes, found.scores))]
    shown = [("detections", draw_boxes(picture, boxes, captions, found.classes), "detections")]
    pointing = {}
    for layer in explainer.layers:
        maps = explanation.maps[layer][i]
        pointing[layer] = [pointing_hit(maps[k], [found.boxes[k]], tolerance=0) for k in range(len(found))]
        for k in range(len(found)):
            heat, box = explainer.preprocessing.photo_view(maps[k], picture.width, picture.height)
            shown.append((f"{_safe(layer)}.det{k + 1}", draw_boxes(overlay(picture, heat, box=box), boxes[k:k + 1],
                                                                   captions[k:k + 1], found.classes[k:k + 1]),
                          f"{explainer.title(layer)} | {captions[k]}"))
    pictures = _save_pictures(stem, shown)
    save_npz(stem, boxes=boxes, scores=found.scores, classes=found.classes,
             **{f"{_safe(layer)}.raw": explanation.raw[layer][i][:len(found)] for layer in explainer.layers},
             **{f"{_safe(layer)}.map": explanation.maps[layer][i][:len(found)] for layer in explainer.layers})
    return {"image": str(path), "detections": [
        {"class": int(c), "label": labels[int(c)], "score": round(float(s), 6),
         "box": [round(float(v), 1) for v in box], "pointing": {layer: pointing[layer][k] for layer in pointing}}
        for k, (c, s, box) in enumerate(zip(found.classes, found.scores, boxes))], "pictures": pictures}


def _write_segments(explainer: Explainer, explanation, i: int, path: Path, picture, stem: Path,
                    labels: list[str], top_k: int) -> dict:
    """Per layer and explained class: its map over the photo with the outline of the region explained."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    classes = np.atleast_1d(explanation.classes[i])
    size = explainer.preprocessing.size
    panels = [(None, picture, "photo")]
    for layer in explainer.layers:
        maps = explanation.maps[layer][i].reshape(len(classes), *explanation.maps[layer].shape[-2:])
        for k, (heat, cls) in enumerate(zip(maps, classes)):
            if cls < 0:
                continue
            region = np.asarray(Image.fromarray(explanation.regions[i, k].astype(np.uint8) * 255).resize(
                (size[1], size[0]), Image.NEAREST)) > 127  # at input resolution, as the map
            heat, box = explainer.preprocessing.photo_view(heat, picture.width, picture.height)
            shown = overlay(picture, heat, box=box)
            cut, _ = explainer.preprocessing.photo_view(region, picture.width, picture.height)
            if box is None:
                shown = outline(shown, cut)
            else:  # the region covers the crop box only
                left, top, right, bottom = (round(v) for v in box)
                shown.paste(outline(shown.crop((left, top, right, bottom)), cut), (left, top))
            suffix = "" if len(classes) == 1 else f".class{k + 1}"
            panels.append((f"{_safe(layer)}{suffix}", shown, f"{explainer.title(layer)} | {labels[int(cls)]}"))
    pictures = _save_pictures(stem, panels)
    save_npz(stem, classes=classes, regions=explanation.regions[i],
             **{f"{_safe(layer)}.raw": explanation.raw[layer][i] for layer in explainer.layers},
             **{f"{_safe(layer)}.map": explanation.maps[layer][i] for layer in explainer.layers})
    share = explanation.regions[i].reshape(len(classes), -1).mean(1)
    return {"image": str(path), "explained": [int(c) for c in classes],
            "explained_labels": [labels[int(c)] if c >= 0 else "" for c in classes],
            "region_share": [round(float(v), 4) for v in share], "pictures": pictures}


def _safe(layer: str) -> str:
    """A layer key as a file-name part: tensor names may hold slashes."""
    return layer.strip("/").replace("/", "_") or "layer"


def _write_summary(outdir: Path, summary: RunSummary, explainer: Explainer) -> None:
    explain_index(outdir, f"onnx-rcam explain: {explainer.name}, {len(summary.rows)} images", summary.rows,
                  summary.failed)
    if explainer.task != "classify":
        _write_task_summary(outdir, summary, explainer)
        return
    with open(outdir / SUMMARY_CSV, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "status", "explained_class", "explained_label", "top1_class", "top1_label",
                         "top1_score", "top_classes", "top_scores"])
        for row in summary.rows:
            top = row["top"]
            writer.writerow([row["image"], "ok", " ".join(map(str, row["explained"])),
                             " | ".join(row["explained_labels"]), top[0]["class"], top[0]["label"], top[0]["score"],
                             " ".join(str(t["class"]) for t in top), " ".join(str(t["score"]) for t in top)])
        for failure in summary.failed:
            writer.writerow([failure["image"], "failed: " + failure["error"]] + [""] * 7)
    (outdir / SUMMARY_JSON).write_text(json.dumps({
        "layers": explainer.layers, "provider": explainer.provider, "top_k_explained": explainer.top_k,
        "images": summary.images, **_progress(summary), "explained": len(summary.rows), "failed": summary.failed,
        "seconds": round(summary.seconds, 3), "images_per_second": round(summary.images_per_second, 2),
        "results": summary.rows}, indent=2) + "\n")


def _progress(summary: RunSummary) -> dict:
    """How far the run got: images resumed from an earlier run, and, where it stopped part-way, why and what is
    left."""
    found = {"resumed": summary.resumed} if summary.resumed else {}
    if summary.interrupted:
        found.update(interrupted=summary.interrupted, remaining=summary.remaining,
                     resume="run the same command again with --resume: it skips the images explained here")
    return found


def _write_task_summary(outdir: Path, summary: RunSummary, explainer: Explainer) -> None:
    """summary.csv with one row per explained detection or class region, and summary.json."""
    with open(outdir / SUMMARY_CSV, "w", newline="") as stream:
        writer = csv.writer(stream)
        if explainer.task == "detect":
            writer.writerow(["image", "status", "detection", "class", "label", "score", "x1", "y1", "x2", "y2",
                             *(f"pointing {layer}" for layer in explainer.layers)])
            for row in summary.rows:
                for k, found in enumerate(row["detections"]):
                    writer.writerow([row["image"], "ok", k + 1, found["class"], found["label"], found["score"],
                                     *found["box"], *(found["pointing"][layer] for layer in explainer.layers)])
        else:
            writer.writerow(["image", "status", "rank", "class", "label", "region_share"])
            for row in summary.rows:
                for k, (cls, label, share) in enumerate(zip(row["explained"], row["explained_labels"],
                                                            row["region_share"])):
                    writer.writerow([row["image"], "ok", k + 1, cls, label, share])
        for failure in summary.failed:
            writer.writerow([failure["image"], "failed: " + failure["error"]])
    (outdir / SUMMARY_JSON).write_text(json.dumps({
        "task": explainer.task, "layers": explainer.layers, "provider": explainer.provider,
        "explained_per_image": explainer.top_k, "images": summary.images, **_progress(summary),
        "explained": len(summary.rows),
        "failed": summary.failed, "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.images_per_second, 2), "results": summary.rows}, indent=2) + "\n")
