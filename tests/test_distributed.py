"""onnx_rcam.distributed and `--ray` (issue 18): on a local Ray cluster, `explain` writes the same .npz maps and
summary rows as on one machine, resumes, and `evaluate` gives the same numbers. Needs the `ray` extra (the README's
test command installs it); skipped without it."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import onnx_rcam
from onnx_rcam.console.cli import run
from onnx_rcam.models_path import sample_images

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install \".[ray]\"")
pq = pytest.importorskip("pyarrow.parquet")

MODEL = str(onnx_rcam.default_model_path())
ORIENTATION = 0x0112  # the EXIF tag a phone writes instead of turning the pixels
PHOTOS = 104


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray cluster for the module: two cores, as CI has; its temporary files under /tmp/ray. Started from
    a folder of its own: Ray puts the driver's working folder first on its workers' sys.path, and the checkout's
    onnx_rcam/ (without rules/, which installs inside the package) would shadow the installed package there."""
    started_in = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_driver"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    finally:
        os.chdir(started_in)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """PHOTOS variants of the bundled photos in two folders (same names in both): scaled, cropped to other aspect
    ratios, mirrored, saved as JPEG (some with an EXIF orientation), PNG or WebP; and one file that is no picture."""
    folder = tmp_path_factory.mktemp("dataset")
    sources = [Image.open(path).convert("RGB") for path in sample_images()]
    for i in range(PHOTOS):
        photo = sources[i % len(sources)]
        scale = 0.4 + 0.1 * (i % 7)
        picture = photo.resize((max(48, round(photo.width * scale)), max(48, round(photo.height * scale))))
        if i % 3 == 1:  # a tall crop of the middle
            picture = picture.crop((picture.width // 4, 0, picture.width * 3 // 4, picture.height))
        if i % 5 == 2:
            picture = picture.transpose(Image.FLIP_LEFT_RIGHT)
        target = folder / f"part{i % 2}" / f"photo{i // 2:03d}"
        target.parent.mkdir(exist_ok=True)
        if i % 4 == 3:
            exif = Image.Exif()
            exif[ORIENTATION] = (3, 6, 8)[i % 3]
            picture.save(target.with_suffix(".jpg"), quality=88, exif=exif)
        else:
            picture.save(target.with_suffix((".jpg", ".png", ".webp")[i % 4 % 3]), **({"quality": 88} if i % 4 == 0
                                                                                        else {}))
    (folder / "part0" / "broken.jpg").write_bytes(b"not a picture")
    return folder


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def npz_files(folder: Path) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in folder.rglob("*.npz")}


def assert_same_maps(ours: Path, theirs: Path) -> None:
    with np.load(ours) as a, np.load(theirs) as b:
        assert sorted(a.files) == sorted(b.files), ours
        for key in a.files:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{ours}: {key}"


def test_ray_explain_writes_what_one_machine_writes(cluster, photos, tmp_path, capsys):
    """Every .npz equal array for array, every summary row field for field, the unreadable file recorded in both;
    then --resume after losing some maps writes them again, the same, and keeps the earlier rows."""
    layers = ["--layer", "auto", "--layer", "_blocks.10", "--top-k", "2", "--batch-size", "8"]
    code, _, err = cli(capsys, "explain", MODEL, str(photos), "-o", str(tmp_path / "one"), *layers)
    assert code == 1 and "broken.jpg: cannot read the image" in err
    code, printed, err = cli(capsys, "explain", MODEL, str(photos), "-o", str(tmp_path / "ray"), *layers,
                             "--workers", "2", "--ray")
    assert code == 1 and "broken.jpg: cannot read the image" in err, err
    assert f"explained {PHOTOS} of {PHOTOS + 1} images" in printed

    one, distributed = npz_files(tmp_path / "one"), npz_files(tmp_path / "ray")
    assert len(one) == PHOTOS and one.keys() == distributed.keys()
    for name in one:
        assert_same_maps(distributed[name], one[name])
    assert not list((tmp_path / "ray").rglob("*.png"))  # the maps alone, unless --overlays

    expected = json.loads((tmp_path / "one" / "summary.json").read_text())
    rows = pq.read_table(tmp_path / "ray" / "summary.parquet").to_pylist()
    assert [row["image"] for row in rows] == sorted(row["image"] for row in rows)  # the images' order
    by_image = {row["image"]: row for row in rows}
    assert len(by_image) == PHOTOS + 1
    for row in expected["results"]:
        found = by_image[row["image"]]
        assert found["status"] == "ok" and found["error"] is None
        assert found["explained_classes"] == row["explained"] and len(row["explained"]) == 2
        assert found["explained_labels"] == row["explained_labels"]
        assert found["top_classes"] == [t["class"] for t in row["top"]]
        assert found["top_labels"] == [t["label"] for t in row["top"]]
        assert found["top_scores"] == [t["score"] for t in row["top"]]
        assert found["provider"] == expected["provider"]
        assert (tmp_path / "ray" / found["maps"]).is_file()
    [failure] = expected["failed"]
    assert by_image[failure["image"]]["status"] == "failed" and by_image[failure["image"]]["error"] == failure["error"]
    assert by_image[failure["image"]]["maps"] is None
    totals = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert (totals["images"], totals["explained"], totals["failed"], totals["layers"]) == (
        PHOTOS + 1, PHOTOS, 1, ["auto", "_blocks.10"])

    # A run that lost some maps, resumed: only those are explained again, and the summary is whole.
    lost = sorted(distributed)[::20]
    for name in lost:
        distributed[name].unlink()
    code, _, err = cli(capsys, "explain", MODEL, str(photos), "-o", str(tmp_path / "ray"), *layers, "--ray")
    assert code == 1 and "--resume" in err  # a folder with files is not written into by accident
    code, printed, _ = cli(capsys, "explain", MODEL, str(photos), "-o", str(tmp_path / "ray"), *layers,
                           "--workers", "2", "--resume", "--ray")
    assert code == 1 and f"({PHOTOS - len(lost)} from the earlier run)" in printed
    totals = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert (totals["resumed"], totals["images"], totals["explained"]) == (PHOTOS - len(lost), len(lost) + 1,
                                                                          len(lost))
    for name in lost:
        assert_same_maps(distributed[name], one[name])
    resumed = pq.read_table(tmp_path / "ray" / "summary.parquet").to_pylist()
    assert sorted(resumed, key=lambda row: row["image"]) == rows


def test_ray_evaluate_gives_the_numbers_of_one_machine(cluster, tmp_path, capsys):
    """The bundled photos and boxes, two methods at two layers, two batches on two workers: the same results.csv,
    digit for digit."""
    arguments = ["--method", "rcam", "--method", "gradcam", "--layer", "_blocks.10", "--layer", "auto", "--steps",
                 "4", "--batch-size", "2"]
    code, _, err = cli(capsys, "evaluate", *arguments, "-o", str(tmp_path / "one"))
    assert code == 0, err
    code, _, err = cli(capsys, "evaluate", *arguments, "-o", str(tmp_path / "ray"), "--workers", "2", "--ray")
    assert code == 0, err
    one = (tmp_path / "one" / "results.csv").read_text()
    assert (tmp_path / "ray" / "results.csv").read_text() == one
    rows = list(csv.DictReader(one.splitlines()))
    assert len(rows) == 4 and all(r["images"] == "4" and r["boxed_images"] == "4" for r in rows)


def test_without_ray_the_error_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where Ray is not installed
    code, _, err = cli(capsys, "explain", MODEL, str(sample_images()[0]), "-o", str(tmp_path / "out"), "--ray")
    assert code == 1 and 'pip install "onnx-rcam[ray]"' in err


def test_cluster_options_are_checked(tmp_path, capsys):
    """--ray takes an optional address, so a folder after it would be read as one; cluster options without --ray
    and --ray with options it cannot honour are refused."""
    photo = str(sample_images()[0])
    code, _, err = cli(capsys, "explain", MODEL, "--ray", photo, "-o", str(tmp_path / "a"))
    assert code == 2 and "is not a Ray address" in err and "put --ray after the inputs" in err
    code, _, err = cli(capsys, "explain", MODEL, photo, "-o", str(tmp_path / "b"), "--workers", "4")
    assert code == 2 and "--workers go with --ray" in err
    code, _, err = cli(capsys, "explain", MODEL, photo, "-o", str(tmp_path / "c"), "--task", "detect", "--ray")
    assert code == 2 and "--ray explains classifiers" in err
    assert not any(tmp_path.iterdir())
