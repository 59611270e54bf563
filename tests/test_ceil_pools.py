"""Pools in ceil mode with padding, as the torch exporters write them, against the independent reference.

In ceil mode, a window that would start past the input and its left padding is dropped by PyTorch and onnxruntime
(MaxPool2d(2, 2, padding=1, ceil_mode=True) on 7 rows: 4 windows), kept by ONNX's shape inference before opset 22
(5). A TorchScript export (opset 17) records no shapes, so it passes onnx.checker's full check and only ONNX's
inference says 5; a dynamo export records the true 4, which the full check then refuses (its inference says 5).
onnx_rcam takes onnxruntime's shapes (load.py), reads the tensors after such a pool through a Slice to them, and
drops value_info that ONNX's inference contradicts, so that the augmented model passes the full check and runs.

Each net: conv, ReLU, the pool, a strided conv (whose transpose depends on the pooled size), ReLU, global pooling
and a Linear layer, explained at the ReLU before the pool, at the pool and at the ReLU after it.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnx_rcam
import reference
import zoo
from conftest import assert_close, run_model

EXPORTERS = ["torchscript", "dynamo"]
BATCH = 3
LAYERS = ["act", "pool", "act2"]

# id: (pool, input height, input width); every one holds a ceil-mode window that starts in the right padding on
# some axis (one fewer window than ONNX's inference before opset 22 counts), except those that keep theirs.
POOLS = {
    "max_k2_s2_p1": (lambda: nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), 7, 7),
    "max_k3_s2_p1_dilation2_kept": (lambda: nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True), 10, 9),
    "max_k3_s3_p1": (lambda: nn.MaxPool2d(3, 3, padding=1, ceil_mode=True), 8, 11),
    "avg_k2_s2_p1": (lambda: nn.AvgPool2d(2, 2, padding=1, ceil_mode=True, count_include_pad=False), 7, 9),
    "avg_k2_s2_p1_count_pad": (lambda: nn.AvgPool2d(2, 2, padding=1, ceil_mode=True, count_include_pad=True), 9, 7),
    "avg_k3_s3_p1_count_pad": (lambda: nn.AvgPool2d(3, 3, padding=1, ceil_mode=True, count_include_pad=True), 8, 8),
    "avg_k3_s2_p1_count_pad_kept": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), 8, 8),
    "max_k3_s2_kept": (lambda: nn.MaxPool2d(3, 2, ceil_mode=True), 8, 10),
}


class PoolNet(nn.Module):
    def __init__(self, pool: nn.Module, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = pool
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.gap(self.act2(self.conv2(self.pool(self.act(self.conv(x)))))), 1))


def onnx_window_count(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """What ONNX's shape inference before opset 22 counts in ceil mode."""
    return -(-(size + 2 * padding - dilation * (kernel - 1) - 1) // stride) + 1


def test_the_cases_hold_windows_that_onnx_counts_and_torch_drops():
    for name, (make, height, width) in POOLS.items():
        pool = make()
        kernel, stride, padding = pool.kernel_size, pool.stride, pool.padding
        dilation = getattr(pool, "dilation", 1)
        torch_sizes = pool(torch.zeros(1, 1, height, width)).shape[2:]
        onnx_sizes = [onnx_window_count(s, kernel, stride, padding, dilation) for s in (height, width)]
        assert (list(torch_sizes) != onnx_sizes) == (not name.endswith("kept")), name


@functools.cache
def model_and_reference(name: str):
    make, height, width = POOLS[name]
    model = zoo.randomize(PoolNet(make()).eval(), seed=sum(map(ord, name)))
    x = torch.randn(BATCH, 3, height, width, generator=torch.Generator().manual_seed(11)).numpy()
    targets = np.array([0, 3, -1], dtype=np.int64)
    with torch.no_grad():
        classes = np.where(targets < 0, model(torch.as_tensor(x)).argmax(1).numpy(), targets)
    assert max(reference.fp32_deviation(model, x, LAYERS, classes, initial="contrastive").values()) < 1e-5
    return model, x, targets, reference.reference(model, x, LAYERS, classes)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", POOLS)
def test_ceil_mode_pool_matches_reference(name, exporter, export_dir):
    model, x, targets, ref = model_and_reference(name)
    height, width = x.shape[2:]
    path = zoo.export(model, export_dir / f"ceil-{name}-{exporter}.onnx", exporter, input_shape=(1, 3, height, width))
    plain = run_model(str(path), {"input": x})["logits"]
    augmented = onnx_rcam.augment(path, layers=LAYERS)
    onnx.checker.check_model(augmented, full_check=True)
    out = run_model(augmented, {"input": x, "rcam/target": targets})

    assert np.array_equal(out["logits"], plain), "original logits changed"
    np.testing.assert_array_equal(out["rcam/class"], ref.classes)
    for layer in LAYERS:
        assert_close(out[f"rcam/{layer}/activation"], ref.activations[layer], f"{layer} activation")
        assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance")
        assert_close(out[f"rcam/{layer}/raw"], ref.raw[layer], f"{layer} raw")
        assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map")
        assert out[f"rcam/{layer}/map"].shape == (BATCH, height, width)


def test_top_k_reads_the_sliced_tensors(export_dir):
    """With top_k, the backward runs on repeated forward tensors: the Slice to the true shape is repeated too."""
    model, x, _, _ = model_and_reference("max_k2_s2_p1")
    path = zoo.export(model, export_dir / "ceil-top-k.onnx", "torchscript", input_shape=(1, 3, 7, 7))
    out = run_model(onnx_rcam.augment(path, layers=["pool"], top_k=2), {"input": x})
    single = run_model(onnx_rcam.augment(path, layers=["pool"]), {"input": x})
    np.testing.assert_allclose(out["rcam/pool/relevance"][:, 0], single["rcam/pool/relevance"], rtol=0, atol=1e-6)
