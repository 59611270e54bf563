"""The README's extension example (one function, one registration) and the error that asks for it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import onnx_rcam
import reference
import zoo
from conftest import assert_close, run_model
from onnx_rcam.propagators import PROPAGATORS, SIGNS

README = Path(__file__).resolve().parent.parent / "README.md"
SIZE = 16


class Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)


class SineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = Sine()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.relu(self.conv2(self.act(self.conv1(x)))))))


@pytest.fixture(scope="module")
def sine_model(tmp_path_factory):
    model = zoo.randomize(SineNet(), seed=5)
    path = zoo.export(model, tmp_path_factory.mktemp("sine") / "sine.onnx", "torchscript",
                      input_shape=(1, 3, SIZE, SIZE))
    return model, path


@pytest.fixture
def readme_extension():
    """Run the README's example; unregister it afterwards, so that other tests see Sin unsupported."""
    block = re.search(r"<!-- extension-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its extension example"
    assert "Sin" not in PROPAGATORS, "Sin is built in now: pick another op for the README example"
    exec(compile(block.group(1), "README.md", "exec"), {})
    yield
    PROPAGATORS.pop("Sin", None)
    SIGNS.pop("Sin", None)


def test_unsupported_op_error_says_what_where_and_how(sine_model):
    _, path = sine_model
    with pytest.raises(onnx_rcam.UnsupportedOpError) as error:
        onnx_rcam.augment(path, layers=["conv1"])
    message = str(error.value)
    assert "unsupported op Sin (node '/act/Sin'" in message
    path_line = message.splitlines()[1].strip()
    assert re.fullmatch(r"/conv1/Conv_output_0 -> \[Sin '/act/Sin'\] -> Conv '/conv2/Conv' -> Relu '/relu/Relu' -> "
                        r"GlobalAveragePool '.*' -> Flatten '.*' -> Gemm '/fc/Gemm' -> logits", path_line), path_line
    assert "@register(\"Sin\")" in message and "Adding an op" in message
    # Above the Sin, nothing is missing.
    onnx_rcam.augment(path, layers=["relu"])


def test_readme_example_matches_reference(sine_model, readme_extension, monkeypatch):
    model, path = sine_model
    monkeypatch.setitem(reference.COMPOSITES["rcam"], Sine, reference.passthrough)
    layers = ["conv1", "act", "relu"]
    x, targets, classes = reference.well_conditioned_batch(model, layers, 3, SIZE, seed=1)
    out = run_model(onnx_rcam.augment(path, layers=layers), {"input": x, "rcam/target": targets})
    ref = reference.reference(model, x, layers, targets=classes)
    for layer in layers:
        assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance")
        assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map")


def test_readme_example_gradient_is_autograd(sine_model, readme_extension):
    """Under the gradient rule everywhere, the relevance of conv1's output is d logit_c / d conv1: the example's
    derivative is right."""
    model, path = sine_model
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    augmented = onnx_rcam.augment(path, layers=["conv1"], composite={"*": "gradient"}, initial="onehot")
    out = run_model(augmented, {"input": x.numpy(), "rcam/target": np.array([1, 4])})

    conv1 = model.conv1(x)
    conv1.retain_grad()
    logits = model.fc(model.flatten(model.avgpool(model.relu(model.conv2(model.act(conv1))))))
    logits[[0, 1], [1, 4]].sum().backward()
    assert_close(out["rcam/conv1/relevance"], conv1.grad.numpy(), "gradient at conv1")
