"""Ground-truth boxes for the pointing games: Pascal VOC XML, COCO JSON or a simple CSV, keyed by image file name.

Boxes are (x0, y0, x1, y1) in the photo's pixels, continuous coordinates (pixel i spans [i, i + 1)):
- VOC: <object><bndbox> xmin ymin xmax ymax, 1-based and inclusive, so x0 = xmin - 1, x1 = xmax;
- COCO: each annotation's bbox [x, y, width, height] of the image with its image_id;
- CSV: a header with image, xmin, ymin, xmax, ymax (continuous coordinates, as COCO's), one box per row.
Every object of an image counts: the pointing games here are class-agnostic (ImageNet classifiers and VOC/COCO
label sets do not match).
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from .errors import RcamError

Box = tuple[float, float, float, float]


def read_boxes(path: str | Path) -> dict[str, list[Box]]:
    """Image file name -> its boxes, from a VOC XML file or folder of them, a COCO .json, or a .csv."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(path.glob("*.xml"))
            if not files:
                raise RcamError(f"{path}: no Pascal VOC .xml files in the folder")
            return _merge(_voc(f) for f in files)
        if path.suffix.lower() == ".xml":
            return _voc(path)
        if path.suffix.lower() == ".json":
            return _coco(path)
        if path.suffix.lower() == ".csv":
            return _csv(path)
    except (OSError, ValueError, KeyError, TypeError, ElementTree.ParseError) as exc:
        raise RcamError(f"cannot read boxes from {path}: {type(exc).__name__}: {exc}") from None
    raise RcamError(f"{path}: boxes must be a Pascal VOC .xml file or folder, a COCO .json, or a .csv")


def _merge(parts) -> dict[str, list[Box]]:
    merged: dict[str, list[Box]] = {}
    for part in parts:
        for name, boxes in part.items():
            merged.setdefault(name, []).extend(boxes)
    return merged


def _voc(path: Path) -> dict[str, list[Box]]:
    root = ElementTree.parse(path).getroot()
    name = root.findtext("filename") or path.with_suffix(".jpg").name
    boxes = []
    for box in root.iter("bndbox"):
        xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    return {name: boxes}


def _coco(path: Path) -> dict[str, list[Box]]:
    data = json.loads(path.read_text())
    names = {image["id"]: Path(image["file_name"]).name for image in data["images"]}
    found: dict[str, list[Box]] = {name: [] for name in names.values()}
    for annotation in data["annotations"]:
        x, y, width, height = annotation["bbox"]
        found[names[annotation["image_id"]]].append((x, y, x + width, y + height))
    return found


def _csv(path: Path) -> dict[str, list[Box]]:
    found: dict[str, list[Box]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            found.setdefault(Path(row["image"]).name, []).append(box)
    return found


def to_input_frame(boxes: list[Box], crop: Box, size: tuple[int, int]) -> list[Box]:
    """Boxes in the photo's pixels -> in the model input's (height, width) pixels, given the crop the preprocessing
    takes (Preprocessing.crop_box); parts outside the crop are cut off, boxes entirely outside dropped."""
    left, top, right, bottom = crop
    scale_x, scale_y = size[1] / (right - left), size[0] / (bottom - top)
    framed = []
    for x0, y0, x1, y1 in boxes:
        box = (max((x0 - left) * scale_x, 0), max((y0 - top) * scale_y, 0),
               min((x1 - left) * scale_x, size[1]), min((y1 - top) * scale_y, size[0]))
        if box[0] < box[2] and box[1] < box[3]:
            framed.append(box)
    return framed
