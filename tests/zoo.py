"""Test architectures, written out here because torchvision is not available.

The models follow torchvision's module layout and paths (`features.23`, `layer2.1.conv1`, ...) so that the scope names
the exporters write match what users of real torchvision models see. Two deliberate differences, both invisible in
the exported graph: residual joins go through an `Add` module, and every ReLU application has its own module, so
that forward hooks (the reference's) can see each tensor.
"""

from pathlib import Path

import onnx
import torch
from torch import nn

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class Add(nn.Module):
    """The residual join a + b, as a module so that a reference can intercept it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, last_channels: int, hidden: int, num_classes: int):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * 7 * 7, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(width: float = 1.0, batch_norm: bool = False, num_classes: int = 1000) -> VGG:
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in VGG16_CONFIG:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = scaled(entry, width)
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        in_channels = out_channels
    return VGG(nn.Sequential(*layers), in_channels, scaled(4096, width), num_classes)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, identity))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.downsample = downsample
        self.add = Add()
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(self.add(out, identity))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...], width: float, num_classes: int):
        super().__init__()
        self.in_channels = scaled(64, width)
        self.conv1 = nn.Conv2d(3, self.in_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, scaled(64, width), depths[0], stride=1)
        self.layer2 = self._make_layer(block, scaled(128, width), depths[1], stride=2)
        self.layer3 = self._make_layer(block, scaled(256, width), depths[2], stride=2)
        self.layer4 = self._make_layer(block, scaled(512, width), depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_channels, num_classes)

    def _make_layer(self, block, channels: int, depth: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.in_channels, channels * block.expansion, stride),
                nn.BatchNorm2d(channels * block.expansion),
            )
        blocks = [block(self.in_channels, channels, stride, downsample)]
        self.in_channels = channels * block.expansion
        blocks += [block(self.in_channels, channels) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(width: float = 1.0, num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), width, num_classes)


def resnet50(width: float = 1.0, num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width, num_classes)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights and BatchNorm statistics; returns the model in eval mode.

    Weights are He-normal (gain sqrt(2) for the ReLU that follows), so activations keep their scale through depth.
    The last conv of each residual branch gets a quarter of that gain, so that the residual stream does not grow
    block after block (ResNet50 logits stay O(1)-O(10)).
    BatchNorm statistics are random so that folding them into the conv is exercised, not a no-op.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor: torch.Tensor, std: float, mean: float = 0.0) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * std + mean)

    def uniform(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) * (high - low) + low)

    last_branch_convs = {id(m.conv3 if isinstance(m, Bottleneck) else m.conv2)
                         for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))}
    last_linear = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                gain = 1.0 if module is last_linear else 2.0 ** 0.5
                if id(module) in last_branch_convs:
                    gain *= 0.25
                normal(module.weight, gain / fan_in ** 0.5)
                if module.bias is not None:
                    normal(module.bias, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                normal(module.running_mean, 0.3)
                uniform(module.running_var, 0.5, 2.0)
                uniform(module.weight, 0.5, 1.5)
                normal(module.bias, 0.1)
    return model.eval()


def export(model: nn.Module, path: str | Path, exporter: str, input_shape: tuple[int, ...] = (1, 3, 224, 224),
           fold_batchnorm: bool = True) -> Path:
    """Export with a dynamic batch axis and static C, H, W, as one self-contained .onnx file.

    Both exporters fold BatchNormalization into the preceding Conv by default; fold_batchnorm=False keeps the
    BatchNormalization nodes (TorchScript: no constant folding; dynamo: no onnxscript optimisation, which also leaves
    Identity and shape-computing nodes in the graph).

    VGG16 at another input size than a multiple of 224 exports only with dynamo (its AdaptiveAvgPool2d((7, 7)) then
    becomes Transpose/GatherND/ReduceMean); TorchScript refuses output sizes that do not divide the input size.
    """
    path = Path(path)
    x = torch.randn(input_shape)
    names = {"input_names": ["input"], "output_names": ["logits"]}
    if exporter == "torchscript":
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, do_constant_folding=fold_batchnorm,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
    elif exporter == "dynamo":
        program = torch.onnx.export(model, (x,), dynamo=True, optimize=fold_batchnorm, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        onnx.save(program.model_proto, path, save_as_external_data=False)
    else:
        raise ValueError(f"unknown exporter {exporter!r}: expected 'torchscript' or 'dynamo'")
    return path
