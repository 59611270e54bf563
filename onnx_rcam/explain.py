"""`onnx-rcam explain`: overlays, maps and a summary for any number of photos, streamed in batches."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import RcamError
from .explainer import Explainer
from .images import load_image
from .models_path import models_folder
from .overlay import overlay, side_by_side

SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
PNG_OPTIONS = {"compress_level": 1}  # zlib's fastest level: PNG encoding was 70% of the run at the default 6


@dataclass
class RunSummary:
    images: int = 0
    failed: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def imagenet_labels() -> list[str]:
    return (models_folder() / "imagenet_classes.txt").read_text().splitlines()


def read_labels(path: Path | None, classes: int) -> list[str]:
    """One label per line; the bundled ImageNet labels for 1000-class models; else the class numbers."""
    if path is not None:
        labels = Path(path).read_text().splitlines()
        if len(labels) < classes:
            raise RcamError(f"{path}: {len(labels)} labels for a model with {classes} classes")
        return labels
    return imagenet_labels() if classes == 1000 else [str(c) for c in range(classes)]


def output_stem(image: Path, roots: list[Path]) -> Path:
    """The image's path below the input folder it came from, without suffix: keeps same-named photos apart."""
    for root in roots:
        if root.is_dir() and image.is_relative_to(root):
            return image.relative_to(root).with_suffix("")
    return Path(image.stem)


def explain_images(explainer: Explainer, images: list[Path], roots: list[Path], outdir: Path, batch_size: int = 8,
                   target: int | None = None, top_k: int = 5, labels: Path | None = None,
                   progress: Callable[[int], None] | None = None) -> RunSummary:
    """Write per image an overlay per layer (and per explained class), a sheet of all of them and the raw maps;
    per run summary.csv and summary.json. Unreadable images are recorded and skipped. Memory stays flat: one batch
    of pictures is held at a time, and the summary keeps a few numbers per image."""
    outdir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    label_names: list[str] | None = None
    started = time.perf_counter()
    for batch in _batches(images, batch_size):
        pictures, readable = [], []
        for path in batch:
            try:
                pictures.append(load_image(path))
                readable.append(path)
            except RcamError as exc:
                summary.failed.append({"image": str(path), "error": str(exc)})
        if readable:
            targets = None if target is None else np.full([len(readable)] + ([explainer.top_k] if explainer.top_k
                                                                             > 1 else []), target)
            explanation = explainer(pictures, targets=targets, extras=True)
            if label_names is None:
                label_names = read_labels(labels, explanation.logits.shape[1])
            for i, (path, picture) in enumerate(zip(readable, pictures)):
                summary.rows.append(_write_image(explainer, explanation, i, path, picture,
                                                 outdir / output_stem(path, roots), label_names, top_k))
        summary.images += len(batch)
        if progress:
            progress(len(batch))
    summary.seconds = time.perf_counter() - started
    _write_summary(outdir, summary, explainer)
    return summary


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _write_image(explainer: Explainer, explanation, i: int, path: Path, picture, stem: Path, labels: list[str],
                 top_k: int) -> dict:
    stem.parent.mkdir(parents=True, exist_ok=True)
    box = explainer.preprocessing.crop_box(picture.width, picture.height)
    classes = np.atleast_1d(explanation.classes[i])
    panels, titles = [picture], ["photo"]
    for layer in explainer.layers:
        maps = explanation.maps[layer][i].reshape(len(classes), *explanation.maps[layer].shape[-2:])
        for rank, (heat, cls) in enumerate(zip(maps, classes)):
            suffix = "" if len(classes) == 1 else f".class{rank + 1}"
            shown = overlay(picture, heat, box=box)
            shown.save(stem.parent / f"{stem.name}.{_safe(layer)}{suffix}.png", **PNG_OPTIONS)
            panels.append(shown)
            titles.append(f"{layer} | {labels[int(cls)].split(',')[0]}")
    side_by_side(panels, titles).save(stem.parent / f"{stem.name}.layers.png", **PNG_OPTIONS)
    np.savez_compressed(stem.parent / f"{stem.name}.npz", classes=classes,
                        **{f"{_safe(layer)}.raw": explanation.raw[layer][i] for layer in explainer.layers},
                        **{f"{_safe(layer)}.map": explanation.maps[layer][i] for layer in explainer.layers})
    scores = explanation.scores[i]
    best = np.argsort(-scores)[:top_k]
    return {"image": str(path), "explained": [int(c) for c in classes],
            "explained_labels": [labels[int(c)] for c in classes],
            "top": [{"class": int(c), "label": labels[int(c)], "score": round(float(scores[c]), 6)} for c in best]}


def _safe(layer: str) -> str:
    """A layer key as a file-name part: tensor names may hold slashes."""
    return layer.strip("/").replace("/", "_") or "layer"


def _write_summary(outdir: Path, summary: RunSummary, explainer: Explainer) -> None:
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
        "images": summary.images, "explained": len(summary.rows), "failed": summary.failed,
        "seconds": round(summary.seconds, 3), "images_per_second": round(summary.images_per_second, 2),
        "results": summary.rows}, indent=2) + "\n")
