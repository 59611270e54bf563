"""Tiny detectors and segmenters whose ONNX exports have the layouts users deploy (issue 14).

Models (random weights through `randomize`; a case runs in a second or two):
- `YoloV5Like`: ultralytics YOLOv5 as exported: Conv-BN-SiLU backbone (SiLU written as x * sigmoid(x)) to strides 8,
  16 and 32, an FPN neck (nearest Upsample, Concat), and a Detect head that decodes in the graph: per scale a 1x1 conv
  to na * (5 + C) channels, viewed [N, na, 5 + C, h, w], permuted to [N, na, h, w, 5 + C], sigmoid, xy = (2 s - 0.5
  + grid) * stride, wh = (2 s)^2 * anchor, reshaped [N, na * h * w, 5 + C]; the scales concatenated: [N, A, 5 + C].
- `YoloV8Like`: ultralytics YOLOv8/11's anchor-free head: per scale a box branch (4 * reg_max channels) and a class
  branch (C), concatenated and flattened to [N, 4 * reg_max + C, h * w], the scales concatenated along the last axis,
  DFL (softmax over reg_max bins, then a 1x1 conv with weights 0..reg_max-1) and dist2bbox to xywh in pixels, the
  class scores through a sigmoid: [N, 4 + C, A].
- `FCNLike` (stride 8 with dilated convs, a 1x1 classifier, bilinear back to the input: [N, C, H, W]),
  `DeepLabV3Like` (ASPP: 1x1, 3x3 at dilations 2 and 4, image pooling; [N, C, H/8, W/8], or upsampled to [N, C, H, W]),
  `UNetLike` (MaxPool encoder, ConvTranspose decoder with skip Concats: [N, C, H, W]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from families import SiLU, conv_bn

CLASSES = 3
SIZE = 64  # detectors' input side (strides 8, 16, 32: grids of 8, 4 and 2)
STRIDES = (8, 16, 32)


def conv_silu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """ultralytics' Conv: Conv2d (same padding, no bias), BatchNorm2d, SiLU."""
    return conv_bn(in_channels, out_channels, kernel, stride, activation=SiLU)


class Backbone(nn.Module):
    """Strided Conv-BN-SiLU stages; returns the features at strides 8, 16 and 32."""

    def __init__(self, widths=(8, 16, 16, 24, 32)):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.stem = conv_silu(3, c1, 3, 2)         # /2
        self.stage1 = conv_silu(c1, c2, 3, 2)      # /4
        self.stage2 = conv_silu(c2, c3, 3, 2)      # /8
        self.stage3 = conv_silu(c3, c4, 3, 2)      # /16
        self.stage4 = conv_silu(c4, c5, 3, 2)      # /32
        self.channels = (c3, c4, c5)

    def forward(self, x):
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        return p3, p4, self.stage4(p4)


class Neck(nn.Module):
    """FPN top-down path: 1x1 lateral conv, nearest upsampling x2, Concat with the finer feature, 3x3 conv."""

    def __init__(self, channels, width: int = 16):
        super().__init__()
        c3, c4, c5 = channels
        self.lateral5 = conv_silu(c5, width, 1)
        self.up5 = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge4 = conv_silu(width + c4, width, 3)
        self.lateral4 = conv_silu(width, width, 1)
        self.up4 = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge3 = conv_silu(width + c3, width, 3)
        self.channels = (width, width, width)

    def forward(self, features):
        p3, p4, p5 = features
        n5 = self.lateral5(p5)
        n4 = self.merge4(torch.cat([self.up5(n5), p4], 1))
        n3 = self.merge3(torch.cat([self.up4(self.lateral4(n4)), p3], 1))
        return n3, n4, n5


# YOLOv5's default anchors (pixels at 640), divided by 8 for the 64-pixel input.
V5_ANCHORS = ((1.25, 1.625, 2.0, 3.75, 4.125, 2.875), (3.75, 7.625, 7.75, 5.625, 7.375, 14.875),
              (14.5, 11.25, 19.5, 24.75, 46.625, 40.75))


class DetectV5(nn.Module):
    """ultralytics YOLOv5's Detect in export mode, with the grids for the fixed input size as buffers."""

    def __init__(self, channels, classes: int = CLASSES, anchors=V5_ANCHORS, strides=STRIDES, size: int = SIZE):
        super().__init__()
        self.na, self.no, self.strides = len(anchors[0]) // 2, classes + 5, strides
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in channels)
        for i, (pixels, stride) in enumerate(zip(anchors, strides)):
            ny = nx = size // stride
            yv, xv = torch.meshgrid(torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32),
                                    indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2) - 0.5
            anchor_grid = torch.tensor(pixels).view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2)
            self.register_buffer(f"grid{i}", grid.contiguous())
            self.register_buffer(f"anchor_grid{i}", anchor_grid.contiguous())

    def forward(self, features):
        z = []
        for i, x in enumerate(features):
            x = self.m[i](x)
            bs, _, ny, nx = x.shape
            y = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous().sigmoid()
            xy, wh, conf = y.split((2, 2, self.no - 4), 4)
            xy = (xy * 2 + getattr(self, f"grid{i}")) * self.strides[i]
            wh = (wh * 2) ** 2 * getattr(self, f"anchor_grid{i}")
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return torch.cat(z, 1)


class YoloV5Like(nn.Module):
    """[N, 3, 64, 64] -> [N, 3 * (64 + 16 + 4), 5 + C]: xywh in pixels, objectness, class probabilities."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck(self.backbone.channels)
        self.detect = DetectV5(self.neck.channels, classes)

    def forward(self, x):
        return self.detect(self.neck(self.backbone(x)))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over reg_max bins, expectation by a fixed 1x1 conv (0..reg_max-1)."""

    def __init__(self, reg_max: int):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.reset()

    def reset(self) -> None:
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(self.reg_max, dtype=torch.float32).view(1, self.reg_max, 1, 1))

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(size: int = SIZE, strides=STRIDES, offset: float = 0.5):
    """ultralytics' make_anchors: cell centres [A, 2] (x, y, in grid units) and the stride of each [A, 1]."""
    points, stride_column = [], []
    for stride in strides:
        h = w = size // stride
        sy, sx = torch.meshgrid(torch.arange(h) + offset, torch.arange(w) + offset, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2).float())
        stride_column.append(torch.full((h * w, 1), float(stride)))
    return torch.cat(points), torch.cat(stride_column)


class DetectV8(nn.Module):
    """ultralytics YOLOv8's Detect in export mode (anchor-free, DFL, xywh in pixels, class sigmoid)."""

    def __init__(self, channels, classes: int = CLASSES, reg_max: int = 8, width: int = 16, strides=STRIDES,
                 size: int = SIZE):
        super().__init__()
        self.nc, self.reg_max, self.no = classes, reg_max, 4 * reg_max + classes
        self.cv2 = nn.ModuleList(nn.Sequential(conv_silu(c, width), nn.Conv2d(width, 4 * reg_max, 1)) for c in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(conv_silu(c, width), nn.Conv2d(width, classes, 1)) for c in channels)
        self.dfl = DFL(reg_max)
        anchors, stride_column = make_anchors(size, strides)
        self.register_buffer("anchors", anchors.transpose(0, 1).contiguous())        # [2, A]
        self.register_buffer("strides", stride_column.transpose(0, 1).contiguous())  # [1, A]

    def forward(self, features):
        x = [torch.cat((self.cv2[i](f), self.cv3[i](f)), 1) for i, f in enumerate(features)]
        shape = x[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)  # dist2bbox, xywh
        x1y1, x2y2 = self.anchors.unsqueeze(0) - lt, self.anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YoloV8Like(nn.Module):
    """[N, 3, 64, 64] -> [N, 4 + C, 64 + 16 + 4]: xywh in pixels, class probabilities."""

    def __init__(self, classes: int = CLASSES, reg_max: int = 8):
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck(self.backbone.channels)
        self.detect = DetectV8(self.neck.channels, classes, reg_max)

    def forward(self, x):
        return self.detect(self.neck(self.backbone(x)))


def relu_conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
    """Conv (no bias), BatchNorm2d, ReLU, padding to keep the size at stride 1 (dilated too)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                                   bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())


class Stride8Backbone(nn.Module):
    """Three stride-2 stages to stride 8, then a dilated stage (dilation 2) that keeps stride 8, as torchvision's
    segmentation backbones replace their last strides by dilations."""

    def __init__(self, widths=(8, 16, 16, 24)):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.layer1 = relu_conv(3, c1, 3, 2)
        self.layer2 = relu_conv(c1, c2, 3, 2)
        self.layer3 = relu_conv(c2, c3, 3, 2)
        self.layer4 = relu_conv(c3, c4, 3, 1, dilation=2)
        self.channels = c4

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FCNLike(nn.Module):
    """torchvision's FCN: backbone (stride 8), FCNHead (3x3 conv, 1x1 classifier), bilinear to the input size."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.backbone = Stride8Backbone()
        self.classifier = nn.Sequential(relu_conv(self.backbone.channels, 16, 3), nn.Conv2d(16, classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        out = self.classifier(self.backbone(x))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class ASPPPooling(nn.Sequential):
    """Image pooling branch: global average, 1x1 conv-BN-ReLU, bilinear back to the feature's size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), relu_conv(in_channels, out_channels, 1))

    def forward(self, x):
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 8, rates=(2, 4)):
        super().__init__()
        self.convs = nn.ModuleList([relu_conv(in_channels, out_channels, 1),
                                    *(relu_conv(in_channels, out_channels, 3, dilation=r) for r in rates),
                                    ASPPPooling(in_channels, out_channels)])
        self.project = relu_conv(out_channels * len(self.convs), out_channels, 1)

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], 1))


class DeepLabV3Like(nn.Module):
    """torchvision's DeepLabV3: backbone (stride 8), ASPP, 3x3 conv, 1x1 classifier; [N, C, H/8, W/8], or
    bilinear to the input size with upsample=True (torchvision's model does)."""

    def __init__(self, classes: int = CLASSES, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.backbone = Stride8Backbone()
        self.classifier = nn.Sequential(ASPP(self.backbone.channels), relu_conv(8, 8, 3), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        out = self.classifier(self.backbone(x))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False) if self.upsample else out


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(relu_conv(in_channels, out_channels), relu_conv(out_channels, out_channels))


class UNetLike(nn.Module):
    """U-Net: DoubleConv and MaxPool down twice, ConvTranspose (stride 2) up with the skip concatenated, 1x1 out."""

    def __init__(self, classes: int = CLASSES, widths=(8, 16, 24)):
        super().__init__()
        c1, c2, c3 = widths
        self.inc = DoubleConv(3, c1)
        self.pool1, self.down1 = nn.MaxPool2d(2), DoubleConv(c1, c2)
        self.pool2, self.down2 = nn.MaxPool2d(2), DoubleConv(c2, c3)
        self.up1, self.conv1 = nn.ConvTranspose2d(c3, c2, 2, stride=2), DoubleConv(2 * c2, c2)
        self.up2, self.conv2 = nn.ConvTranspose2d(c2, c1, 2, stride=2), DoubleConv(2 * c1, c1)
        self.outc = nn.Conv2d(c1, classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(self.pool1(x1))
        x3 = self.down2(self.pool2(x2))
        y = self.conv1(torch.cat([x2, self.up1(x3)], 1))
        y = self.conv2(torch.cat([x1, self.up2(y)], 1))
        return self.outc(y)


MODELS = {"yolov5": YoloV5Like, "yolov8": YoloV8Like, "fcn": FCNLike, "deeplabv3": DeepLabV3Like,
          "deeplabv3_upsampled": lambda: DeepLabV3Like(upsample=True), "unet": UNetLike}
SEGMENTER_SIZE = 32


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """zoo.randomize (He-normal Conv2d and Linear, random BatchNorm statistics), He-normal ConvTranspose2d weights
    (fan-in: the taps that reach one output) and DFL's fixed weights restored; eval mode."""
    zoo.randomize(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.ConvTranspose2d):
                fan_in = module.weight.shape[0] // module.groups * module.weight[0, 0].numel()
                fan_in = max(1, fan_in // (module.stride[0] * module.stride[1]))
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, DFL):
                module.reset()
    return model.eval()
