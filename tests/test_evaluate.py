"""`onnx-rcam evaluate` end to end on a small model and a few photos, its numbers recomputed directly."""

from __future__ import annotations

import csv
import json
import math
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import onnx_rcam
import zoo
from conftest import run_model
from onnx_rcam import metrics
from onnx_rcam.boxes import read_boxes, to_input_frame
from onnx_rcam.console.cli import run
from onnx_rcam.evaluate import evaluate as run_evaluation
from onnx_rcam.explainer import Explainer
from onnx_rcam.models_path import sample_images

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 1/8-width ResNet18 (64 x 64 input, its sidecar preprocessing), three photos of different shapes and one
    corrupt file, boxes for two of the photos as CSV."""
    folder = tmp_path_factory.mktemp("evaluate")
    model = zoo.randomize(zoo.resnet18(0.125, num_classes=10), seed=31)
    path = zoo.export(model, folder / "net.onnx", "torchscript", input_shape=(1, 3, SIZE, SIZE))
    (folder / "net.preprocess.json").write_text(json.dumps(
        {"size": SIZE, "resize_shorter": 73, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(8)
    for name, shape in [("a.png", (90, 120, 3)), ("b.png", (100, 80, 3)), ("c.png", (64, 64, 3))]:
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(photos / name)
    (photos / "broken.jpg").write_bytes(b"not a picture")
    boxes = folder / "boxes.csv"
    boxes.write_text("image,xmin,ymin,xmax,ymax\na.png,0,0,120,90\nb.png,0,0,4,4\n")
    return path, photos, boxes


def evaluate(capsys, setup, outdir, *extra):
    path, photos, boxes = setup
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", str(path), str(photos), "-o", str(outdir), "--layer", "layer3", "--layer", "layer4",
             "--steps", "4", "--boxes", str(boxes), "--device", "cpu", *extra])
    return exit_info.value.code, capsys.readouterr()


def test_evaluate_writes_the_table_csv_and_plot(capsys, setup, tmp_path):
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "rcam", "--method", "gradcam",
                              "--method", "scorecam")
    assert code == 0, captured.err
    assert "broken.jpg" in captured.err and "| rcam | `layer4` |" in captured.out
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["layer"]) for r in rows] == [(m, layer) for m in ("rcam", "gradcam", "scorecam")
                                                         for layer in ("layer3", "layer4")]
    assert all(r["images"] == "3" and r["boxed_images"] == "2" for r in rows)
    for r in rows:
        assert 0 <= float(r["average_drop"]) <= 100 and 0 <= float(r["insertion_auc"]) <= 1
        # a's box is the whole photo: every map points into it and keeps all its energy there; b's is a corner.
        assert float(r["pointing_game"]) in (50.0, 100.0) and float(r["energy_pointing_game"]) >= 50
    assert (tmp_path / "out" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Energy-based pointing game" in (tmp_path / "out" / "results.md").read_text()

    # The output folder is kept unless --force.
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "rcam")
    assert code == 1 and "--force" in captured.err


def test_evaluate_numbers_recomputed_directly(capsys, setup, tmp_path):
    """Average Drop, Increase in Confidence (soft, and binarised at the top 25 %) and the deletion AUC of Grad-CAM
    at layer4, from the maps of an Explainer and plain model runs; the intervals from the per-image values."""
    path, photos, _ = setup
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "gradcam", "--top-percent", "25")
    assert code == 0, captured.err
    with (tmp_path / "out" / "results.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["layer"] == "layer4")

    explainer = Explainer(path, layers=["layer4"], device="cpu", method="gradcam")
    x = explainer.prepare(sorted(photos.glob("*.png")))
    explanation = explainer(x)
    heat, classes = explanation.maps["layer4"], explanation.classes

    def probability(batch, targets):
        logits = run_model(str(path), {"input": batch.astype(np.float32)})["logits"].astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True))[np.arange(len(batch)), targets]

    full, masked = probability(x, classes), probability(x * heat[:, None], classes)
    assert float(row["average_drop"]) == pytest.approx(np.mean(np.maximum(0, full - masked) / full) * 100, rel=1e-4)
    assert float(row["increase_in_confidence"]) == pytest.approx(np.mean(masked > full) * 100)
    # binarised: the 1024 most salient of the 64 x 64 pixels kept, the rest 0 in the normalised input
    kept = np.zeros([len(x), SIZE * SIZE], np.float32)
    for n, saliency in enumerate(heat):
        kept[n, np.argsort(-saliency.ravel(), kind="stable")[:1024]] = 1
    top = probability(x * kept.reshape(len(x), 1, SIZE, SIZE), classes)
    drops = np.maximum(0, full - top) / full * 100
    assert float(row["binarised_average_drop"]) == pytest.approx(drops.mean(), rel=1e-4)
    assert float(row["binarised_increase_in_confidence"]) == pytest.approx(np.mean(top > full) * 100)
    assert float(row["top_percent"]) == 25
    draws = np.random.default_rng(0).integers(0, len(x), size=(2000, len(x)))
    np.testing.assert_allclose([float(row["binarised_average_drop_low"]), float(row["binarised_average_drop_high"])],
                               np.percentile(drops[draws].mean(axis=1), [2.5, 97.5]), rtol=1e-4)
    assert "Average Drop, top 25% binarised (%)" in (tmp_path / "out" / "results.md").read_text()
    assert float(row["map_mean"]) == pytest.approx(heat.mean(), rel=1e-5)
    aucs = []
    for image, saliency, target in zip(x, heat, classes):
        order = np.argsort(-saliency.ravel(), kind="stable")
        curve = []
        for k in range(5):  # 4 steps: 0, 1/4, ..., all of the 64 x 64 pixels set to 0
            erased = image.reshape(3, -1).copy()
            erased[:, order[: k * SIZE * SIZE // 4]] = 0
            curve.append(probability(erased.reshape(1, 3, SIZE, SIZE), [target])[0])
        aucs.append(np.trapezoid(curve, dx=0.25))
    assert float(row["deletion_auc"]) == pytest.approx(np.mean(aucs), rel=1e-4)
    assert float(row["deletion_auc_low"]) <= float(row["deletion_auc"]) <= float(row["deletion_auc_high"])
    with (tmp_path / "out" / "per_image.csv").open() as handle:
        per_image = [r for r in csv.DictReader(handle) if r["layer"] == "layer4"]
    assert [r["image"] for r in per_image] == ["a.png", "b.png", "c.png"]
    np.testing.assert_allclose([float(r["deletion_auc"]) for r in per_image], aucs, rtol=1e-4)
    assert [r["pointing_game"] for r in per_image][2] == "nan"   # c.png has no box


def test_insertion_and_pointing_games_recomputed_directly(capsys, setup, tmp_path):
    """Insertion: the most salient pixels of the image inserted into its blurred copy (11 x 11, sigma 5) in 4
    steps; the pointing games from the boxes brought into the model's frame. Each value, not its range: a swap of
    insertion's start and end, or of a box's frame, changes them."""
    path, photos, boxes = setup
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "rcam")
    assert code == 0, captured.err
    with (tmp_path / "out" / "results.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["layer"] == "layer3")

    explainer = Explainer(path, layers=["layer3"], device="cpu", method="rcam")
    names = sorted(p.name for p in photos.glob("*.png"))
    pictures = [Image.open(photos / name).convert("RGB") for name in names]
    x = explainer.prepare(pictures)
    explanation = explainer(x)
    heat, classes = explanation.maps["layer3"], explanation.classes

    def probability(batch, target):
        logits = run_model(str(path), {"input": batch.astype(np.float32)})["logits"].astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True))[:, target]

    aucs = []
    for image, saliency, target in zip(x, heat, classes):
        blurred = metrics.gaussian_blur(image)
        order = np.argsort(-saliency.ravel(), kind="stable")
        curve = []
        for k in range(5):
            inserted = blurred.reshape(3, -1).copy()
            chosen = order[: k * SIZE * SIZE // 4]
            inserted[:, chosen] = image.reshape(3, -1)[:, chosen]
            curve.append(probability(inserted.reshape(1, 3, SIZE, SIZE), target)[0])
        aucs.append(np.trapezoid(curve, dx=0.25))
    assert float(row["insertion_auc"]) == pytest.approx(np.mean(aucs), rel=1e-4)

    ground_truth = read_boxes(boxes)
    hits, energy = [], []
    for name, picture, saliency in zip(names, pictures, heat):
        if name in ground_truth:
            framed = to_input_frame(ground_truth[name], explainer.preprocessing.crop_box(*picture.size),
                                    (SIZE, SIZE))
            hits.append(metrics.pointing_hit(saliency, framed))
            energy.append(metrics.energy_in_boxes(saliency, framed))
    assert len(hits) == int(row["boxed_images"]) == 2
    assert float(row["pointing_game"]) == pytest.approx(np.mean(hits) * 100)
    assert float(row["energy_pointing_game"]) == pytest.approx(np.mean(energy) * 100, rel=1e-5)
    assert 0 < np.mean(energy) < 1  # b's corner box holds part of its map, not all and not none


def test_relu_clips_the_rcam_maps():
    """relu: rcam's maps are those of an Explainer with relu, which differ from the signed ones where the raw map
    has negative values (the bundled model's _blocks.4 on the cat)."""
    model, images = onnx_rcam.default_model_path(), [sample_images()[1]]
    signed = Explainer(model, layers=["_blocks.4"], device="cpu", method="rcam")(images, extras=True).raw["_blocks.4"]
    assert signed.min() < 0
    rows = {relu: run_evaluation(model, images, ["rcam"], ["_blocks.4"], steps=2, device="cpu", relu=relu).rows[0]
            for relu in (False, True)}
    for relu, row in rows.items():
        explainer = Explainer(model, layers=["_blocks.4"], device="cpu", method="rcam", relu=relu)
        assert row["map_mean"] == pytest.approx(explainer(images).maps["_blocks.4"].mean(), rel=1e-5)
    assert rows[False]["map_mean"] != pytest.approx(rows[True]["map_mean"], rel=1e-3)


@pytest.mark.parametrize("option, value", [("--initial", "onehot"), ("--composite", "epsilon_plus")])
def test_initial_and_composite_reach_the_relevance_maps(capsys, setup, tmp_path, option, value):
    """--initial and --composite (issue 15: onehot against contrastive, the composites against each other): the
    maps evaluated are an Explainer's with the same setting, and differ from the default's (their mean, per layer)."""
    path, photos, _ = setup
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "lrp-pos", option, value)
    assert code == 0, captured.err
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = {r["layer"]: float(r["map_mean"]) for r in csv.DictReader(handle)}
    images = sorted(photos.glob("*.png"))
    setting = {option.lstrip("-"): value}
    for layer, mean in rows.items():
        chosen = Explainer(path, layers=[layer], device="cpu", method="lrp-pos", **setting)(images).maps[layer]
        default = Explainer(path, layers=[layer], device="cpu", method="lrp-pos")(images).maps[layer]
        assert mean == pytest.approx(chosen.mean(), rel=1e-5)
        assert np.abs(chosen - default).max() > 0.01, (layer, "the setting changed nothing")


def test_fuse_adds_a_row_of_the_fused_maps(capsys, setup, tmp_path):
    """--fuse: after each method's layers, a row of layer `fused` measuring the Explainer's fused maps."""
    path, photos, _ = setup
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "rcam-pos", "--fuse")
    assert code == 0, captured.err
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["layer"], r["depth"]) for r in rows] == [("layer3", "0"), ("layer4", "1"), ("fused", "2")]
    explanation = Explainer(path, layers=["layer3", "layer4"], device="cpu", method="rcam-pos", fuse=True)(
        sorted(photos.glob("*.png")))
    assert float(rows[2]["map_mean"]) == pytest.approx(explanation.maps["fused"].mean(), rel=1e-5)
    assert not np.allclose(explanation.maps["fused"], explanation.maps["layer4"], atol=1e-2)

    # measure: the fused maps alone, the same values at the same depth
    alone = run_evaluation(path, sorted(photos.glob("*.png")), ["rcam-pos"], ["layer3", "layer4"],
                           read_boxes(setup[2]), steps=4, device="cpu", fuse=True, measure=["fused"])
    assert [(r["layer"], r["depth"]) for r in alone.rows] == [("fused", 2)]
    for column in ("deletion_auc", "binarised_average_drop", "energy_pointing_game", "energy_pointing_game_high"):
        assert alone.rows[0][column] == pytest.approx(float(rows[2][column]), rel=1e-6)


def test_control_maps(capsys, setup, tmp_path):
    """random (noise seeded by the photo's name) and centre (a Gaussian at the centre), alone: the explained class
    still comes from the augmented model's run."""
    path, photos, _ = setup
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "random", "--method", "centre")
    assert code == 0, captured.err
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = {(r["method"], r["layer"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {(m, layer) for m in ("random", "centre") for layer in ("layer3", "layer4")}
    noise = [np.random.default_rng(zlib.crc32(name.encode())).random((SIZE, SIZE), np.float32)
             for name in ("a.png", "b.png", "c.png")]
    assert float(rows["random", "layer3"]["map_mean"]) == pytest.approx(np.mean(noise), rel=1e-5)
    # sigma 16 px: the mean of a Gaussian over the 64 x 64 square, (sqrt(2 pi) 16 erf(2 / sqrt(2)) / 64) ** 2
    assert float(rows["centre", "layer4"]["map_mean"]) == pytest.approx(
        (np.sqrt(2 * np.pi) * 16 * math.erf(2 / np.sqrt(2)) / 64) ** 2, rel=1e-3)
    # a's box is the whole photo, b's a corner far from the centre's peak
    assert float(rows["centre", "layer4"]["pointing_game"]) == 50.0
    assert rows["random", "layer3"]["deletion_auc"] == rows["random", "layer4"]["deletion_auc"]


def test_evaluate_refuses_bad_input(capsys, setup, tmp_path):
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "nope")
    assert code == 2 and "Invalid value" in captured.err
    path, _, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", str(path), str(tmp_path), "-o", str(tmp_path / "o2")])
    assert exit_info.value.code == 1 and "no images found" in capsys.readouterr().err



def test_evaluate_without_a_model_takes_the_bundled_one(capsys, tmp_path):
    """No MODEL: the bundled model on its photos, with their boxes (here the first photo only)."""
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", "-o", str(tmp_path / "out"), "--limit", "1", "--steps", "2", "--method", "rcam",
             "--device", "cpu"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    with (tmp_path / "out" / "results.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert row["images"] == "1" and row["boxed_images"] == "1" and float(row["pointing_game"]) in (0.0, 100.0)
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", str(onnx_rcam.default_model_path()), "-o", str(tmp_path / "o2")])
    assert exit_info.value.code == 2 and "give the photos" in capsys.readouterr().err


def test_evaluate_data_without_a_model_takes_the_bundled_one(capsys, tmp_path):
    """DATA alone (a folder or images, with boxes of its own): the bundled model explains it."""
    photo = sorted((onnx_rcam.default_model_path().parent / "images").glob("*.jpg"))[0]
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,xmin,ymin,xmax,ymax\n{photo.name},0,0,10,10\n")
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", str(photo), "--boxes", str(boxes), "-o", str(tmp_path / "out"), "--steps", "2",
             "--method", "rcam", "--device", "cpu"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert "efficientnet_lite0.onnx" in captured.out
    with (tmp_path / "out" / "results.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert row["images"] == "1" and row["boxed_images"] == "1"


def test_missing_matplotlib_is_reported_before_measuring(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the [evaluate] extra sees
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "rcam")
    assert code == 1 and "pip install 'onnx-rcam[evaluate]'" in captured.err
    assert not (tmp_path / "out").exists()


def test_evaluate_writes_an_index_page(capsys, setup, tmp_path):
    code, captured = evaluate(capsys, setup, tmp_path / "out", "--method", "rcam")
    assert code == 0, captured.err
    page = (tmp_path / "out" / "index.html").read_text()
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert page.count("<tr>") == 1 + len(rows) and 'src="metrics.png"' in page
    assert f"{float(rows[0]['deletion_auc']):.3f}" in page and "Deletion AUC" in page
