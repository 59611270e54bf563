"""A run of `explain` that stops part-way writes the summary of what it did, and --resume finishes it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnx_rcam
from onnx_rcam.console.cli import run
from onnx_rcam.explainer import Explainer


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_a_stopped_run_keeps_its_summary_and_resumes(capsys, tmp_path, monkeypatch):
    photos = str(onnx_rcam.default_model_path().parent / "images")
    out = tmp_path / "out"
    calls = []
    real_call = Explainer.__call__

    def failing_second_batch(self, images, *args, **kwargs):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("the GPU fell off the bus")
        return real_call(self, images, *args, **kwargs)

    monkeypatch.setattr(Explainer, "__call__", failing_second_batch)
    with pytest.raises(RuntimeError, match="fell off"):
        run(["explain", str(onnx_rcam.default_model_path()), photos, "--batch-size", "2", "-o", str(out)])
    assert "--resume" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == "RuntimeError: the GPU fell off the bus" and summary["remaining"] == 2
    assert len(summary["results"]) == 2 and len(list(out.glob("*.npz"))) == 2 and "--resume" in summary["resume"]

    code, _, err = cli(capsys, "explain", str(onnx_rcam.default_model_path()), photos, "-o", str(out))
    assert code == 1 and "--resume" in err  # a folder with files is not written into by accident
    calls.clear()
    monkeypatch.setattr(Explainer, "__call__", real_call)
    code, printed, err = cli(capsys, "explain", str(onnx_rcam.default_model_path()), photos, "--batch-size", "2",
                             "-o", str(out), "--resume")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == 2 and summary["images"] == 2 and "interrupted" not in summary
    assert len(summary["results"]) == 4 and len({r["image"] for r in summary["results"]}) == 4
    assert "explained 4 of 4 images (2 from the earlier run)" in printed


def test_images_alone_are_explained_by_the_bundled_model(capsys, tmp_path):
    """`onnx-rcam explain photo.jpg`: an image (or folder) as the first argument is data for the bundled model."""
    photo = sorted((onnx_rcam.default_model_path().parent / "images").glob("*.jpg"))[0]
    code, printed, err = cli(capsys, "explain", str(photo), "-o", str(tmp_path / "out"), "--method", "gradcam")
    assert code == 0, err
    assert "efficientnet_lite0.onnx" in printed and (tmp_path / "out" / f"{photo.stem}.auto.png").is_file()
    code, _, err = cli(capsys, "explain", str(onnx_rcam.default_model_path()), "-o", str(tmp_path / "o2"))
    assert code == 2 and "give the images to explain" in err


def test_pictures_are_titled_with_the_method_and_the_module():
    """`auto` is titled with the module it chose (recorded in the model's metadata), every title with the method; a
    module path given as the key is not repeated."""
    explainer = Explainer(onnx_rcam.default_model_path(), layers=["auto", "_blocks.10"], method="gradcam")
    assert explainer.title("auto") == "gradcam auto (_swish_1)"
    assert explainer.title("_blocks.10") == "gradcam _blocks.10"


def test_index_html_links_every_picture(capsys, tmp_path):
    """explain writes index.html: a section per image with what was explained and each picture it wrote, linked by
    paths relative to the folder (so the folder can be moved or served)."""
    photos = str(onnx_rcam.default_model_path().parent / "images")
    code, _, err = cli(capsys, "explain", photos, "-o", str(tmp_path / "out"), "--layer", "auto", "--layer",
                       "_blocks.10", "--top-k", "2")
    assert code == 0, err
    page = (tmp_path / "out" / "index.html").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for row in summary["results"]:
        files = [p["file"] for p in row["pictures"]]
        assert len(files) == 1 + 2 * 2 and all((tmp_path / "out" / f).is_file() for f in files)
        assert all(f'src="{f}"' in page for f in files if not f.endswith(".layers.png"))
        assert row["explained_labels"][0] in page
    assert page.count("<h2>") == 4 and "Not explained" not in page


def test_a_model_with_a_fixed_batch_of_one_explains_any_number(tmp_path):
    """Many deployed files fix the batch at 1: the images go through one at a time, with the same maps."""
    import numpy as np
    import onnx
    from onnx_rcam.load import fix_input_shape
    model = onnx.load(onnx_rcam.default_model_path())
    fix_input_shape(model, [1, 3, 224, 224])
    onnx.save(model, tmp_path / "batch1.onnx")
    photos = sorted((onnx_rcam.default_model_path().parent / "images").glob("*.jpg"))[:3]
    sidecar = onnx_rcam.default_model_path().with_name("efficientnet_lite0.preprocess.json")
    fixed = Explainer(tmp_path / "batch1.onnx", layers=["_blocks.10"], preprocessing=str(sidecar))(photos)
    free = Explainer(onnx_rcam.default_model_path(), layers=["_blocks.10"])(photos)
    np.testing.assert_array_equal(fixed.classes, free.classes)
    np.testing.assert_allclose(fixed.maps["_blocks.10"], free.maps["_blocks.10"], atol=1e-5)


def test_fuse_writes_the_fused_map_of_each_method(capsys, tmp_path):
    """explain --fuse: NAME.npz holds fused.map, the min-max normalisation of the mean of the layers' maps, and the
    fused map gets its own overlay, titled with the layers it fuses. Detectors and Score-CAM are refused."""
    photo = onnx_rcam.default_model_path().parent / "images" / "chelsea.jpg"
    out = tmp_path / "out"
    code, _, err = cli(capsys, "explain", str(photo), "-o", str(out), "--layer", "_blocks.4", "--layer", "auto",
                       "--method", "lrp-pos", "--fuse")
    assert code == 0, err
    saved = np.load(out / "chelsea.npz")
    mean = (saved["_blocks.4.map"] + saved["auto.map"]) / 2
    expected = (mean - mean.min()) / (mean.max() - mean.min())
    np.testing.assert_allclose(saved["fused.map"], expected, atol=1e-6)
    assert "fused.raw" not in saved and (out / "chelsea.fused.png").is_file()
    assert Explainer(onnx_rcam.default_model_path(), layers=["_blocks.4", "auto"], fuse=True).title("fused") == \
        "lrp fused (_blocks.4, auto)"
    for refused in (["--task", "detect"], ["--method", "scorecam"]):
        code, _, err = cli(capsys, "explain", str(photo), "-o", str(tmp_path / "no"), "--fuse", *refused)
        assert code == 2 and "--fuse" in err
