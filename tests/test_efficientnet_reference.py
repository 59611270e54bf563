"""tests/efficientnet_reference.py, the bundled model as reference.py explains it, is the library's model: the same
function as its own forward, and its depthwise convs (zero padding inside) the same as F.conv2d's of the padded
input, forward and transposed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from efficientnet_reference import DepthwiseConv2d, bundled_torch_model
from photos import bundled_batch


@pytest.mark.parametrize("kernel, stride, pad", [(3, 1, (1, 1, 1, 1)), (3, 2, (0, 1, 0, 1)), (5, 1, (0, 0, 0, 0)),
                                               (5, 2, (1, 2, 1, 2))])
def test_depthwise_conv_is_f_conv2d(kernel, stride, pad):
    conv = DepthwiseConv2d(6, 6, kernel, stride, groups=6, pad=pad).double()
    x = torch.randn(2, 6, 13, 12, dtype=torch.float64, requires_grad=True)
    height, width = 13 + pad[2] + pad[3], 12 + pad[0] + pad[1]
    seed = torch.randn(2, 6, (height - kernel) // stride + 1, (width - kernel) // stride + 1, dtype=torch.float64)
    ours = conv(x)
    expected = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, conv.stride, 0, 1, 6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.autograd.grad(ours, x, seed)[0], torch.autograd.grad(expected, x, seed)[0],
                               rtol=0, atol=1e-13)


def test_rebuilt_model_computes_the_librarys_forward():
    """The logits of the rebuilt model against the library's own EfficientNet.forward on the photos, float32."""
    from efficientnet_lite_pytorch import EfficientNet

    from onnx_rcam.models import build_default_model

    library = build_default_model.load_torch_model()
    photos = torch.from_numpy(bundled_batch())
    with torch.no_grad():
        expected = EfficientNet.forward(library, photos)
        torch.testing.assert_close(bundled_torch_model()(photos), expected, rtol=0, atol=2e-5)
