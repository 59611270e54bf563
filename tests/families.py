"""One small model per common CNN family (issue 3), with torchvision's module paths.

As in zoo.py, every activation is applied by its own module and joins are modules (zoo.Add), so that the reference's
hooks see each tensor; products with a gate go through `Gate` for the same reason, and SiLU is written out as
x * sigmoid(x). Widths, depths and input sizes are cut down so that a case runs in a second or two; the op patterns
the exporters write (grouped and depthwise convs, Concat, Split/Slice, channel shuffles, gates, LRN) are the real
ones. `FAMILIES` says how the tests use each model.
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import zoo


class Gate(nn.Module):
    """x scaled by a gate, the output of a Sigmoid or Hardsigmoid (maybe [N, C, 1, 1]); gate_first writes gate * x,
    as torchvision's SqueezeExcitation does."""

    def __init__(self, gate_first: bool = False):
        super().__init__()
        self.gate_first = gate_first

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gate * x if self.gate_first else x * gate


class SiLU(nn.Module):
    """x * sigmoid(x), written out (ONNX has no SiLU: both exporters write Sigmoid and Mul anyway)."""

    def __init__(self):
        super().__init__()
        self.sigmoid = nn.Sigmoid()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x, self.sigmoid(x))


class SpatialMean(nn.Module):
    """x.mean([2, 3]), ShuffleNetV2's global pooling (ReduceMean in ONNX); other axes for channels-last features
    or tokens."""

    def __init__(self, dims: tuple[int, ...] = (2, 3)):
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dims)


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: Callable[[], nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (same padding, no bias), BatchNorm, optional activation."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's SE block: scale = gate(fc2(act(fc1(avgpool(x))))), out = scale * x."""

    def __init__(self, channels: int, squeezed: int, activation: Callable[[], nn.Module],
                 scale_activation: Callable[[], nn.Module]):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.activation = activation()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.scale_activation = scale_activation()
        self.gate = Gate(gate_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return self.gate(x, scale)


# -- DenseNet: pre-activation BatchNorm -> ReLU -> Conv on concatenated features, average-pool transitions ------

class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)  # reads a concatenation: cannot be folded into a conv
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.relu1(self.norm1(torch.cat(features, 1)))
        return self.conv2(self.relu2(self.norm2(self.conv1(x))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, in_channels: int, growth: int, bn_size: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(in_channels + i * growth, growth, bn_size)
                          for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 4, blocks: tuple[int, ...] = (2, 2, 2), stem: int = 8, bn_size: int = 2,
                 num_classes: int = 20):
        super().__init__()
        layers = OrderedDict(conv0=nn.Conv2d(3, stem, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(stem),
                             relu0=nn.ReLU(), pool0=nn.MaxPool2d(3, 2, 1))
        channels = stem
        for i, depth in enumerate(blocks, start=1):
            layers[f"denseblock{i}"] = DenseBlock(depth, channels, growth, bn_size)
            channels += depth * growth
            if i < len(blocks):
                layers[f"transition{i}"] = nn.Sequential(OrderedDict(
                    norm=nn.BatchNorm2d(channels), relu=nn.ReLU(),
                    conv=nn.Conv2d(channels, channels // 2, 1, bias=False), pool=nn.AvgPool2d(2, 2)))
                channels //= 2
        layers["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(layers)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.relu(self.features(x))), 1))


# -- MobileNetV2: inverted residuals, depthwise convs, ReLU6, no activation after the residual Add ----------------

class InvertedResidualV2(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = [conv_bn(in_channels, hidden, 1, activation=nn.ReLU6)] if expand_ratio != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.add = zoo.Add() if stride == 1 and in_channels == out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.add is None else self.add(x, self.conv(x))


class ResidualBlock(nn.Module):
    """Layers in sequence, plus the block's input where the output keeps its shape (inverted bottlenecks)."""

    def __init__(self, layers: list[nn.Module], residual: bool):
        super().__init__()
        self.block = nn.Sequential(*layers)
        self.add = zoo.Add() if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        return result if self.add is None else self.add(result, x)


class PooledClassifier(nn.Module):
    """torchvision's MobileNet and EfficientNet layout: `features`, global average pooling, then `classifier`."""

    def __init__(self, features: list[nn.Module], classifier: nn.Module):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MobileNetV2(PooledClassifier):
    # (expand ratio, channels, blocks, stride): the first four stages of torchvision's, at a quarter width.
    SETTING = ((1, 4, 1, 1), (6, 6, 2, 2), (6, 8, 3, 2), (6, 16, 2, 2))

    def __init__(self, num_classes: int = 20, stem: int = 8, last: int = 64):
        layers = [conv_bn(3, stem, 3, 2, activation=nn.ReLU6)]
        channels = stem
        for expand_ratio, out_channels, blocks, stride in self.SETTING:
            for i in range(blocks):
                layers.append(InvertedResidualV2(channels, out_channels, stride if i == 0 else 1, expand_ratio))
                channels = out_channels
        layers.append(conv_bn(channels, last, 1, activation=nn.ReLU6))
        super().__init__(layers, nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes)))


# -- MobileNetV3: HardSwish, SE blocks gated by Hardsigmoid --------------------------------------------------------

class InvertedResidualV3(ResidualBlock):
    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int, use_se: bool,
                 activation: Callable[[], nn.Module], stride: int):
        layers = [conv_bn(in_channels, expanded, 1, activation=activation)] if expanded != in_channels else []
        layers.append(conv_bn(expanded, expanded, kernel, stride, groups=expanded, activation=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(2, expanded // 4), nn.ReLU, nn.Hardsigmoid))
        layers.append(conv_bn(expanded, out_channels, 1, activation=None))
        super().__init__(layers, stride == 1 and in_channels == out_channels)


class MobileNetV3(PooledClassifier):
    # (in, kernel, expanded, out, SE, activation, stride): mobilenet_v3_small's first blocks at a quarter width.
    SETTING = ((4, 3, 4, 4, True, nn.ReLU, 2), (4, 3, 18, 6, False, nn.ReLU, 2), (6, 3, 22, 6, False, nn.ReLU, 1),
               (6, 5, 24, 10, True, nn.Hardswish, 2), (10, 5, 60, 10, True, nn.Hardswish, 1))

    def __init__(self, num_classes: int = 20, last: int = 60, hidden: int = 64):
        layers = [conv_bn(3, 4, 3, 2, activation=nn.Hardswish)]
        layers += [InvertedResidualV3(*setting) for setting in self.SETTING]
        layers.append(conv_bn(self.SETTING[-1][3], last, 1, activation=nn.Hardswish))
        super().__init__(layers, nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(0.2),
                                               nn.Linear(hidden, num_classes)))


# -- EfficientNet-B0: MBConv with SiLU = x * sigmoid(x) and SE blocks gated by Sigmoid -------------------------------

class MBConv(ResidualBlock):
    def __init__(self, expand_ratio: int, kernel: int, stride: int, in_channels: int, out_channels: int):
        expanded = in_channels * expand_ratio
        layers = [conv_bn(in_channels, expanded, 1, activation=SiLU)] if expand_ratio != 1 else []
        layers += [conv_bn(expanded, expanded, kernel, stride, groups=expanded, activation=SiLU),
                   SqueezeExcitation(expanded, max(1, in_channels // 4), SiLU, nn.Sigmoid),
                   conv_bn(expanded, out_channels, 1, activation=None)]
        super().__init__(layers, stride == 1 and in_channels == out_channels)


class EfficientNet(PooledClassifier):
    # (expand ratio, kernel, stride, channels, blocks): B0's first four stages at a quarter width.
    SETTING = ((1, 3, 1, 4, 1), (6, 3, 2, 6, 2), (6, 5, 2, 10, 2), (6, 3, 2, 20, 2))

    def __init__(self, num_classes: int = 20, stem: int = 8, last: int = 80):
        stages: list[nn.Module] = [conv_bn(3, stem, 3, 2, activation=SiLU)]
        channels = stem
        for expand_ratio, kernel, stride, out_channels, blocks in self.SETTING:
            stages.append(nn.Sequential(*[MBConv(expand_ratio, kernel, stride if i == 0 else 1,
                                                 channels if i == 0 else out_channels, out_channels)
                                          for i in range(blocks)]))
            channels = out_channels
        stages.append(conv_bn(channels, last, 1, activation=SiLU))
        super().__init__(stages, nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes)))


# -- EfficientNetV2 (Tan and Le 2021): fused MBConv (one 3x3 expansion conv, SiLU) early, MBConv with SE later ----

class FusedMBConv(ResidualBlock):
    def __init__(self, expand_ratio: int, stride: int, in_channels: int, out_channels: int):
        expanded = in_channels * expand_ratio
        super().__init__([conv_bn(in_channels, expanded, 3, stride, activation=SiLU),
                          conv_bn(expanded, out_channels, 1, activation=None)],
                         stride == 1 and in_channels == out_channels)


class EfficientNetV2(PooledClassifier):
    def __init__(self, num_classes: int = 20):
        stages: list[nn.Module] = [conv_bn(3, 8, 3, 2, activation=SiLU),
                                   nn.Sequential(FusedMBConv(1, 1, 8, 8), FusedMBConv(4, 2, 8, 12)),
                                   nn.Sequential(MBConv(4, 3, 2, 12, 16), MBConv(4, 3, 1, 16, 16)),
                                   conv_bn(16, 64, 1, activation=SiLU)]
        super().__init__(stages, nn.Linear(64, num_classes))


# -- RegNetY (Radosavovic et al. 2020): bottleneck with a grouped 3x3 conv and SE, ReLU after the residual join -----

class RegNetYBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int = 4):
        super().__init__()
        self.block = nn.Sequential(
            conv_bn(in_channels, out_channels, 1),
            conv_bn(out_channels, out_channels, 3, stride, groups=out_channels // group_width),
            SqueezeExcitation(out_channels, max(1, in_channels // 4), nn.ReLU, nn.Sigmoid),
            conv_bn(out_channels, out_channels, 1, activation=None))
        self.shortcut = conv_bn(in_channels, out_channels, 1, stride, activation=None) \
            if stride != 1 or in_channels != out_channels else None
        self.add = zoo.Add()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.add(self.block(x), x if self.shortcut is None else self.shortcut(x)))


class RegNetY(PooledClassifier):
    def __init__(self, num_classes: int = 20):
        stages: list[nn.Module] = [conv_bn(3, 8, 3, 2), nn.Sequential(RegNetYBlock(8, 8, 1), RegNetYBlock(8, 16, 2)),
                                   nn.Sequential(RegNetYBlock(16, 24, 2), RegNetYBlock(24, 24, 1))]
        super().__init__(stages, nn.Linear(24, num_classes))


# -- MobileNetV4 (Qin et al. 2024): the universal inverted bottleneck, optional depthwise convs before the expansion
#    and after it, ReLU ------------------------------------------------------------------------------------------------

class UniversalInvertedBottleneck(ResidualBlock):
    def __init__(self, in_channels: int, out_channels: int, start_kernel: int, middle_kernel: int, stride: int,
                 expand_ratio: int = 4):
        expanded = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if start_kernel:
            layers.append(conv_bn(in_channels, in_channels, start_kernel, stride if not middle_kernel else 1,
                                  groups=in_channels, activation=None))
        layers.append(conv_bn(in_channels, expanded, 1))
        if middle_kernel:
            layers.append(conv_bn(expanded, expanded, middle_kernel, stride, groups=expanded))
        layers.append(conv_bn(expanded, out_channels, 1, activation=None))
        super().__init__(layers, stride == 1 and in_channels == out_channels)


class MobileNetV4(PooledClassifier):
    def __init__(self, num_classes: int = 20):
        stages: list[nn.Module] = [
            conv_bn(3, 8, 3, 2),
            nn.Sequential(UniversalInvertedBottleneck(8, 12, 3, 3, 2),      # ExtraDW
                          UniversalInvertedBottleneck(12, 12, 0, 3, 1)),    # inverted bottleneck
            nn.Sequential(UniversalInvertedBottleneck(12, 16, 5, 0, 2),     # ConvNext-like
                          UniversalInvertedBottleneck(16, 16, 0, 0, 1)),    # FFN
            conv_bn(16, 64, 1)]
        super().__init__(stages, nn.Linear(64, num_classes))


# -- SqueezeNet 1.1: Fire modules, class scores from a conv, a ReLU and global pooling (no Gemm) --------------------

class Fire(nn.Module):
    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """squeezenet1_1 at 1/8 width."""

    def __init__(self, num_classes: int = 20):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(8, 2, 8, 8), Fire(16, 2, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 16, 16), Fire(32, 4, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 6, 24, 24), Fire(48, 6, 24, 24), Fire(48, 8, 32, 32), Fire(64, 8, 32, 32))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# -- GoogLeNet: Inception modules with parallel branches, one of them a max pool, joined by Concat ------------------

class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """torchvision's googlenet up to inception4a, at 1/8 width, without the auxiliary heads."""

    def __init__(self, num_classes: int = 20):
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(8, 8, 1)
        self.conv3 = BasicConv2d(8, 24, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(24, 8, 12, 16, 2, 4, 4)
        self.inception3b = Inception(32, 16, 16, 24, 4, 12, 8)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(60, 24, 12, 26, 2, 6, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.inception4a(self.maxpool3(self.inception3b(self.inception3a(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# -- ShuffleNetV2: channel split (chunk), Concat, channel shuffle (Reshape -> Transpose -> Reshape) -----------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """torchvision's shufflenetv2.InvertedResidual."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
                nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, half, 1, bias=False), nn.BatchNorm2d(half),
                nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, processed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(processed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats: tuple[int, ...] = (2, 2, 2), channels: tuple[int, ...] = (8, 16, 32, 64, 128),
                 num_classes: int = 20):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = channels[0]
        for i, (count, out_channels) in enumerate(zip(repeats, channels[1:]), start=2):
            units = [ShuffleUnit(in_channels, out_channels, 2)]
            units += [ShuffleUnit(out_channels, out_channels, 1) for _ in range(count - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = nn.Sequential(nn.Conv2d(in_channels, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]),
                                   nn.ReLU())
        self.mean = SpatialMean()
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.mean(self.conv5(x)))


# -- ResNeXt: ResNet with grouped 3x3 convs ----------------------------------------------------------------------

class ResNeXtBottleneck(zoo.Bottleneck):
    """zoo.Bottleneck with torchvision's ResNeXt widths: conv2 is a grouped conv, width = channels * 2 here."""

    groups, width_per_group = 4, 32

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__(in_channels, channels, stride, downsample)
        # zoo.Bottleneck's forward and module paths, with the first three convs replaced by ResNeXt's.
        width = channels * self.width_per_group // 64 * self.groups
        self.conv1, self.bn1 = zoo.conv1x1(in_channels, width), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=self.groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = zoo.conv1x1(width, channels * self.expansion)


def resnext(num_classes: int = 20) -> zoo.ResNet:
    return zoo.ResNet(ResNeXtBottleneck, (2, 1, 1, 1), 0.125, num_classes)


# -- AlexNet with LocalResponseNorm (Krizhevsky et al. 2012, as in Caffe's reference net) ----------------------------

class AlexNet(nn.Module):
    """The original's layout, classifier on the flattened 6 x 6 maps. There is no AdaptiveAvgPool2d as in torchvision's
    AlexNet: the TorchScript exporter loses the static shapes in torch's LocalResponseNorm and then cannot export it."""

    def __init__(self, num_classes: int = 20, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 11, 4, 2), nn.ReLU(), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(12, 32, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 48, 3, padding=1), nn.ReLU(),
            nn.Conv2d(48, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(32 * 6 * 6, hidden), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# -- A fully convolutional head: 1x1 Conv to the classes, then global average pooling and Flatten (NiN style) -------

class ConvHeadNet(nn.Module):
    def __init__(self, num_classes: int = 20):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2), conv_bn(8, 16, 3, 2), conv_bn(16, 16, 3, 1),
                                      conv_bn(16, 32, 3, 2))
        self.classifier = nn.Conv2d(32, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.avgpool(self.classifier(self.features(x))))


# -- Upsampling inside the network (FPN / U-Net style): bilinear and nearest Resize, a skip concatenated ----------

class UpsamplingNet(nn.Module):
    def __init__(self, num_classes: int = 20):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.down = conv_bn(8, 16, 3, 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fuse = conv_bn(24, 16, 3, 1)
        self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = conv_bn(16, 32, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        fused = self.fuse(torch.cat([skip, self.up(self.down(skip))], 1))
        return self.fc(self.flatten(self.avgpool(self.head(self.up_nearest(fused)))))


# -- ConvNeXt (Liu et al. 2022), ConvNeXt-T-like at small width: depthwise 7x7, LayerNorm over channels-last
#    tokens, Linear - GELU - Linear, layer scale, residual; channels-first LayerNorm written out in the stem and the
#    downsampling layer, as the reference implementation does ---------------------------------------------------

class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm: the mean and variance over C, written out."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        normalized = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * normalized + self.bias[:, None, None]


class LayerScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.to_last = Permute(0, 2, 3, 1)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.scale = LayerScale(channels)
        self.to_first = Permute(0, 3, 1, 2)
        self.add = zoo.Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.pwconv2(self.act(self.pwconv1(self.norm(self.to_last(self.dwconv(x))))))
        return self.add(x, self.to_first(self.scale(branch)))


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 20, widths: tuple[int, int] = (16, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, 4), LayerNorm2d(widths[0]))
        self.stages = nn.Sequential(ConvNeXtBlock(widths[0]),
                                    nn.Sequential(ConvNeXtBlock(widths[1]), ConvNeXtBlock(widths[1])))
        self.downsample = nn.Sequential(LayerNorm2d(widths[0]), nn.Conv2d(widths[0], widths[1], 2, 2))
        self.pool = SpatialMean()
        self.norm = nn.LayerNorm(widths[1], eps=1e-6)
        self.head = nn.Linear(widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[1](self.downsample(self.stages[0](self.stem(x))))
        return self.head(self.norm(self.pool(x)))


# -- Vision transformers: ViT (Dosovitskiy et al. 2021) and DeiT (Touvron et al. 2021, a distillation token) at
#    small width: patch-embedding Conv, class token, position embedding, pre-norm blocks of multi-head attention
#    (timm's fused qkv) and a GELU MLP, the class token's head -------------------------------------------------------

class AttentionCore(nn.Module):
    """softmax(q k^T / sqrt d + bias) v over [N, heads, T, d]: a module of its own, for the reference's rule.

    bias (optional, computed from parameters only): [heads, T, T], or [W, heads, T, T] for attention within W
    windows of each image (Swin's relative position bias plus its shifted-window mask), where N is images x W.
    """

    def weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        if bias is not None and bias.dim() == 4:
            logits = (logits.reshape(-1, *bias.shape) + bias).reshape(logits.shape)
        elif bias is not None:
            logits = logits + bias
        return torch.softmax(logits, -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights(q, k, bias) @ v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(self.core(q, k, v).transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.add1 = zoo.Add()
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act = nn.Linear(dim, mlp_ratio * dim), nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.add2 = zoo.Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.add1(x, self.attn(self.norm1(x)))
        return self.add2(x, self.fc2(self.act(self.fc1(self.norm2(x)))))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 20, dim: int = 24, depth: int = 3, heads: int = 2, patch: int = 8,
                 size: int = 32, distilled: bool = False, mlp_ratio: int = 2):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        extra = 2 if distilled else 1
        self.tokens = nn.Parameter(torch.zeros(1, extra, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, extra + (size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.distilled = distilled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), patches], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        # DeiT averages the heads of its class and distillation tokens (one shared head here).
        return self.head(x[:, :2].mean(1)) if self.distilled else self.head(x[:, 0])


def deit(num_classes: int = 20) -> VisionTransformer:
    return VisionTransformer(num_classes, distilled=True)


def vit_small(width: float = 1.0, num_classes: int = 1000) -> VisionTransformer:
    """ViT-S/16 (22M parameters at width 1) on 224 x 224 images, for benchmarks/speed.py."""
    heads = max(1, round(6 * width))
    return VisionTransformer(num_classes, dim=64 * heads, depth=12, heads=heads, patch=16, size=224, mlp_ratio=4)


# -- Swin Transformer (Liu et al. 2021), Swin-T-like at small width: attention within windows, every second block
#    on windows shifted by torch.roll (with the mask that keeps the wrapped-around regions apart), a relative position
#    bias, and patch merging (2 x 2 neighbours concatenated, LayerNorm, Linear) between stages. channels_last lays
#    the features out [N, H, W, C], as timm >= 0.9 and torchvision do; otherwise [N, H * W, C] tokens, as the
#    original implementation does ----------------------------------------------------------------------------------

def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[N, H, W, C] -> [N * windows, window * window, C], each window's pixels row by row."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, resolution: int, shift: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        rows, columns = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        coordinates = torch.stack([rows.flatten(), columns.flatten()])             # [2, T]
        relative = (coordinates[:, :, None] - coordinates[:, None, :]) + window - 1  # [2, T, T]
        self.register_buffer("bias_index", relative[0] * (2 * window - 1) + relative[1], persistent=False)
        self.register_buffer("mask", self._shift_mask(resolution, window, shift), persistent=False)

    @staticmethod
    def _shift_mask(resolution: int, window: int, shift: int) -> torch.Tensor | None:
        """[windows, T, T]: -100 between pixels that the roll brought together from opposite borders."""
        if not shift:
            return None
        regions = torch.zeros(1, resolution, resolution, 1)
        bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for label, (r, c) in enumerate((r, c) for r in bands for c in bands):
            regions[:, r, c, :] = label
        labels = window_partition(regions, window)[..., 0]  # [windows, T]
        return (labels[:, None, :] != labels[:, :, None]).float() * -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias_table[self.bias_index.reshape(-1)].reshape(t, t, self.heads).permute(2, 0, 1)
        if self.mask is not None:
            bias = bias[None] + self.mask[:, None]
        return self.proj(self.core(q, k, v, bias).transpose(1, 2).reshape(n, t, d))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, resolution: int, shift: int, channels_last: bool):
        super().__init__()
        self.window, self.resolution, self.channels_last = window, resolution, channels_last
        self.shift = shift if resolution > window else 0  # one window covers the grid: nothing to shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, resolution, self.shift)
        self.add1 = zoo.Add()
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act = nn.Linear(dim, 2 * dim), nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.add2 = zoo.Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        y = self.norm1(x)
        if not self.channels_last:
            y = y.reshape(-1, r, r, y.shape[-1])
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = window_reverse(self.attn(window_partition(y, self.window)), self.window, r, r)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        if not self.channels_last:
            y = y.reshape(-1, r * r, y.shape[-1])
        x = self.add1(x, y)
        return self.add2(x, self.fc2(self.act(self.fc1(self.norm2(x)))))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: int, channels_last: bool):
        super().__init__()
        self.resolution, self.channels_last = resolution, channels_last
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            x = x.reshape(-1, self.resolution, self.resolution, x.shape[-1])
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        if not self.channels_last:
            x = x.flatten(1, 2)
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    def __init__(self, num_classes: int = 20, dim: int = 16, heads: tuple[int, ...] = (2, 4),
                 depths: tuple[int, ...] = (2, 2), window: int = 4, patch: int = 4, size: int = 32,
                 channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.patch_norm = nn.LayerNorm(dim)
        stages, resolution = [], size // patch
        for i, (stage_heads, depth) in enumerate(zip(heads, depths)):
            blocks = [SwinBlock(dim, stage_heads, window, resolution, (window // 2) * (j % 2), channels_last)
                      for j in range(depth)]
            if i + 1 < len(depths):
                blocks.append(PatchMerging(dim, resolution, channels_last))
                dim, resolution = 2 * dim, resolution // 2
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.pool = SpatialMean((1, 2) if channels_last else (1,))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        if not self.channels_last:
            x = x.flatten(1, 2)
        return self.head(self.pool(self.norm(self.layers(self.patch_norm(x)))))


def swin_tokens(num_classes: int = 20) -> SwinTransformer:
    return SwinTransformer(num_classes, channels_last=False)


class ConvNeXtTiny(nn.Module):
    """ConvNeXt-T (28M parameters at width 1): depths 3, 3, 9, 3 at 96, 192, 384, 768 channels; for speed.py."""

    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        widths = [zoo.scaled(c, width) for c in (96, 192, 384, 768)]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, 4), LayerNorm2d(widths[0]))
        self.downsample = nn.ModuleList(nn.Sequential(LayerNorm2d(a), nn.Conv2d(a, b, 2, 2))
                                        for a, b in zip(widths, widths[1:]))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(c) for _ in range(depth)])
                                    for c, depth in zip(widths, (3, 3, 9, 3)))
        self.pool = SpatialMean()
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[0](self.stem(x))
        for downsample, stage in zip(self.downsample, self.stages[1:]):
            x = stage(downsample(x))
        return self.head(self.norm(self.pool(x)))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """zoo.randomize, with two changes that keep the fp32 comparison against the float64 reference well-conditioned.

    - Residual branches end at a quarter of their scale, as zoo.randomize does for ResNets, and ConvNeXt's layer
      scales are 0.05-0.15: the Add's proportional split amplifies rounding where branch and shortcut nearly cancel.
      ConvNeXt's stages and a ViT's residual stream also start from mostly positive values (offset biases), for the
      same reason: their features are signed, and the exact norm rule of a global mean divides by their sum.
    - DenseNet's transition convs get non-negative weights, so that their average pools see non-negative values: the
      exact norm rule divides by each window's sum, which rounding moves without bound where signed values cancel.
    """
    zoo.randomize(model, seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (InvertedResidualV2, InvertedResidualV3, MBConv)) and module.add is not None:
                branch_end = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1]
                branch_end.weight.mul_(0.25)
                branch_end.bias.mul_(0.25)
            elif isinstance(module, FusedMBConv):  # a full 3x3 conv sums 9 C terms: keep its SiLU's input moderate,
                module.block[0][1].weight.mul_(0.25)  # where onnxruntime's sigmoid is not exactly 0 (below about -20)
            elif isinstance(module, LayerScale):  # ConvNeXt's residual branches, small as trained ones start
                module.gamma.uniform_(0.05, 0.15, generator=torch.Generator().manual_seed(seed))
            elif isinstance(module, (TransformerBlock, SwinBlock)):  # small residual branches, as for ResNets
                for last in (module.attn.proj, module.fc2):
                    last.weight.mul_(0.1)
                    last.bias.mul_(0.1)
            elif isinstance(module, VisionTransformer):  # a mostly positive residual stream: few joins cancel
                module.pos_embed.add_(2.0)
            elif isinstance(module, WindowAttention):  # mostly positive values: the weighted sums of LRP-epsilon
                module.qkv.bias[2 * module.proj.in_features:].add_(2.0)  # through A V stay away from 0
            elif isinstance(module, SwinTransformer):
                module.patch_norm.bias.add_(2.0)
                for stage in module.layers:
                    for merging in stage:
                        if isinstance(merging, PatchMerging):  # non-negative weights of positive inputs
                            merging.norm.bias.add_(2.0)
                            merging.reduction.weight.abs_()
            elif isinstance(module, ConvNeXt):  # each stage's input mostly positive: few joins or means cancel
                module.stem[1].bias.add_(2.0)
                module.downsample[1].bias.add_(2.0)
            elif isinstance(module, DenseNet):
                for name, transition in module.features.named_children():
                    if name.startswith("transition"):
                        transition.conv.weight.abs_()
    return model.eval()


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    size: int                # input height and width
    layers: tuple[str, ...]  # module paths whose outputs the tests explain
    # transformers: (extra tokens, patch rows, patch columns), and whether the layers are [N, h, w, C] (Swin)
    tokens: tuple[int, int, int] | tuple[int, int, int, bool] | None = None


FAMILIES = {
    "densenet": Family(DenseNet, 64, ("features.denseblock1", "features.transition1", "features.denseblock2",
                                      "features.norm5")),
    "mobilenet_v2": Family(MobileNetV2, 96, ("features.1", "features.3", "features.6", "features.9")),
    "mobilenet_v3": Family(MobileNetV3, 96, ("features.1", "features.3", "features.5", "features.6")),
    "efficientnet": Family(EfficientNet, 96, ("features.2", "features.3", "features.4", "features.5")),
    "squeezenet": Family(SqueezeNet, 96, ("features.3", "features.7", "features.12", "classifier.2")),
    "googlenet": Family(GoogLeNet, 96, ("conv3", "inception3a", "inception3b", "inception4a")),
    "shufflenet_v2": Family(ShuffleNetV2, 96, ("maxpool", "stage2", "stage3", "conv5")),
    "resnext": Family(resnext, 96, ("layer1", "layer2", "layer4")),
    "alexnet_lrn": Family(AlexNet, 224, ("features.1", "features.2", "features.6", "features.12")),
    "conv_head": Family(ConvHeadNet, 64, ("features.1", "features.3", "classifier")),
    "upsampling": Family(UpsamplingNet, 32, ("down", "up", "fuse", "up_nearest")),
    # Not the stem: with random weights, fp32 rounding alone moves the relevance below the first block's branch by
    # 4e-4 of its maximum (the reference's own fp32 run), beyond what the comparison can tell from a bug.
    "convnext": Family(ConvNeXt, 64, ("stages.0", "downsample", "stages.1.0", "stages.1")),
    "efficientnet_v2": Family(EfficientNetV2, 64, ("features.1", "features.2.0", "features.2", "features.3")),
    "regnet_y": Family(RegNetY, 64, ("features.1.0", "features.1", "features.2", "features.2.1.block")),
    "mobilenet_v4": Family(MobileNetV4, 64, ("features.1.0", "features.1", "features.2", "features.3")),
    # The last two blocks' token layers: with random weights, fp32 rounding alone moves the relevance below an
    # earlier attention by 2e-4 to 2e-3 of its maximum (LRP-epsilon through values that average out to near 0).
    # tests/test_heads.py holds the gradient methods to autograd at every depth.
    "vit": Family(VisionTransformer, 32, ("blocks.1", "blocks.2.norm1"), tokens=(1, 4, 4)),
    "deit": Family(deit, 32, ("blocks.1", "blocks.2.norm1"), tokens=(2, 4, 4)),
    # Both layouts: [N, h, w, C] (timm >= 0.9, torchvision) and [N, h * w, C] tokens (the original code); the
    # stages' outputs after patch merging, a shifted-window block and the last stage's norm1.
    "swin": Family(SwinTransformer, 32, ("layers.0.1", "layers.0", "layers.1.1.norm1", "layers.1"),
                   tokens=(0, 8, 8, True)),
    "swin_tokens": Family(swin_tokens, 32, ("layers.0.1", "layers.0", "layers.1.1.norm1", "layers.1"),
                          tokens=(0, 8, 8)),
}
