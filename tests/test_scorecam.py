"""Score-CAM through onnxruntime against a direct float64 computation in torch, and its command line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import onnx_rcam
import zoo
from conftest import assert_close
from onnx_rcam.console.cli import run
from onnx_rcam.errors import RcamError
from onnx_rcam.scorecam import ScoreCamExplainer

SIZE = 64
LAYERS = ["layer3", "layer4"]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    model = zoo.randomize(zoo.resnet18(0.125, num_classes=10), seed=21)
    path = zoo.export(model, tmp_path_factory.mktemp("scorecam") / "resnet18.onnx", "torchscript",
                      input_shape=(1, 3, SIZE, SIZE))
    return model, path


def score_cam_reference(model, x, layer, classes):
    """Score-CAM written out: each channel upsampled and min-max normalised masks the image, the softmax over
    channels of the masked images' class scores weighs the channels; map = min-max of ReLU(raw), upsampled."""
    model = copy.deepcopy(model).double().eval()
    captured = {}
    model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.__setitem__("A", o))
    x = torch.as_tensor(x).double()
    raws = []
    with torch.no_grad():
        model(x)
        activations = captured["A"]
        for n, c in enumerate(classes):
            up = F.interpolate(activations[n:n + 1], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
            low = up.amin(dim=(1, 2), keepdim=True)
            span = up.amax(dim=(1, 2), keepdim=True) - low
            masks = torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), 0.0)
            weights = torch.softmax(model(x[n:n + 1] * masks[:, None])[:, c], dim=0)
            raws.append((weights[:, None, None] * activations[n]).sum(0))
    raw = torch.stack(raws)
    positive = raw.clamp(min=0)
    low = positive.amin(dim=(1, 2), keepdim=True)
    span = positive.amax(dim=(1, 2), keepdim=True) - low
    normalized = torch.where(span > 0, (positive - low) / torch.where(span > 0, span, 1.0), 0.0)
    return raw, F.interpolate(normalized[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]


def test_score_cam_matches_the_direct_computation(resnet):
    model, path = resnet
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)).numpy()
    seen = []
    explainer = ScoreCamExplainer(path, layers=LAYERS, device="cpu", batch_size=24, progress=seen.append)
    explanation = explainer(x, targets=np.array([3, -1]), extras=True)
    assert explanation.classes[0] == 3
    channels = {layer: explanation.activations[layer].shape[1] for layer in LAYERS}
    assert sum(seen) == 2 * sum(channels.values()) and max(seen) == 24  # every mask, in batches of 24
    for layer in LAYERS:
        raw, heat = score_cam_reference(model, x, layer, explanation.classes)
        assert_close(explanation.raw[layer], raw.numpy(), f"{layer} raw")
        assert_close(explanation.maps[layer], heat.numpy(), f"{layer} map")
        assert explanation.maps[layer].shape == (2, SIZE, SIZE)


def test_score_cam_refuses_what_it_cannot_run(resnet):
    _, path = resnet
    with pytest.raises(RcamError, match="plain model"):
        ScoreCamExplainer(onnx_rcam.augment(path), device="cpu")
    with pytest.raises(RcamError, match="batch_size must be at least 1"):
        ScoreCamExplainer(path, device="cpu", batch_size=0)


def test_explain_command_draws_score_cam(resnet, tmp_path, capsys):
    _, path = resnet
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(picture)
    with pytest.raises(SystemExit) as exit_info:
        run(["explain", str(path), str(picture), "-o", str(tmp_path / "out"), "--method", "scorecam",
             "--mask-batch", "16", "--layer", "layer4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "method    scorecam" in out and (tmp_path / "out" / "summary.csv").is_file()
    maps = np.load(next((tmp_path / "out").rglob("*.npz")))
    assert maps["layer4.map"].shape == (SIZE, SIZE) and 0 <= maps["layer4.map"].min() <= maps["layer4.map"].max() <= 1
