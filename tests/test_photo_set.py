"""Integrity of the evaluation photo set in data/photos (issue 15, item 3): no model runs.

Every photo has at least one box, every box lies inside its photo with a positive area, every file in the folder is
listed in boxes.csv and in LICENSES.md, and the set is at least 40 photos, each at most 640 pixels on its longest side.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from onnx_rcam.boxes import read_boxes

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"
BOXES = PHOTOS / "boxes.csv"
DOCS = {"boxes.csv", "LICENSES.md", "README.md"}


def _images() -> list[Path]:
    return sorted(p for p in PHOTOS.iterdir() if p.name not in DOCS)


def test_boxes_csv_header_and_reader():
    with BOXES.open(newline="") as handle:
        assert next(csv.reader(handle)) == ["image", "xmin", "ymin", "xmax", "ymax"]
    boxes = read_boxes(BOXES)  # as `onnx-rcam evaluate --boxes` reads it
    assert sum(len(found) for found in boxes.values()) == sum(1 for _ in BOXES.open()) - 1


def test_at_least_40_photos_each_boxed_and_listed():
    images = _images()
    boxes = read_boxes(BOXES)
    assert len(images) >= 40
    assert {p.name for p in images} == set(boxes), "every file in the folder has boxes, every boxed photo is there"
    assert all(boxes[p.name] for p in images)


@pytest.mark.parametrize("photo", _images(), ids=lambda p: p.name)
def test_photo_boxes_inside_and_positive(photo):
    boxes = read_boxes(BOXES)[photo.name]
    with Image.open(photo) as image:
        assert image.format == "JPEG"
        width, height = image.size
    assert max(width, height) <= 640
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (x0, y0, x1, y1)


def test_every_photo_has_a_licence_entry():
    licences = (PHOTOS / "LICENSES.md").read_text()
    table = {line.split("`")[1] for line in licences.splitlines() if line.startswith("| `")}
    assert table == {p.name for p in _images()}


def test_set_stays_small():
    assert sum(p.stat().st_size for p in _images()) < 6 * 1024 * 1024
