"""Graph styles (issue 3): small networks written the ways old and new exporters and converters write them.

Every style yields an ONNX file that computes the same function as a torch model of this module, so the torch
reference applies unchanged. Most styles rewrite a TorchScript export with onnx.helper; `tf2onnx_graph` writes,
node by node, the graph TensorFlow converters produce for a small Keras model (NHWC input and a Transpose, Keras
"same" padding, a ZeroPadding2D, ReLU6 as Clip, a Reshape + MatMul + Add head and a final Softmax).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import zoo
from families import conv_bn

SIZE = 32
CLASSES = 10


class StyleNet(nn.Module):
    """Conv-BN-ReLU stem, max pool, a residual block, global pooling, a Linear head. The flatten is written as
    x.view(x.size(0), -1), which TorchScript exports as a Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain."""

    layers = ("stem", "block")

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block = zoo.BasicBlock(8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.block(self.pool(self.stem(x))))
        return self.fc(x.view(x.size(0), -1))


class ConvScoresNet(nn.Module):
    """SqueezeNet-style class scores from a 1x1 conv and global pooling. With `four_d` (the exported form) they stay
    [N, K, 1, 1] up to a Softmax over the classes; without, they are flattened (what the reference explains)."""

    layers = ("features.0", "features.1")

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2), conv_bn(8, 16, 3, 2))
        self.classifier = nn.Conv2d(16, CLASSES, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.four_d = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.avgpool(self.classifier(self.features(x)))
        return F.softmax(scores, dim=1) if self.four_d else self.flatten(scores)


class KerasNet(nn.Sequential):
    """The function of tf2onnx_graph, in NCHW: Conv(stride 2, "same"), ReLU6, ZeroPadding2D + depthwise conv, ReLU,
    1x1 conv, ReLU, global average pooling, Dense."""

    # reference module path -> the tensor tf2onnx_graph names it
    layers = OrderedDict([("relu6", "model/re_lu/Relu6:0"), ("dw_relu", "model/re_lu_1/Relu:0"),
                          ("pw_relu", "model/re_lu_2/Relu:0")])

    def __init__(self):
        super().__init__(OrderedDict([
            ("same_pad", nn.ZeroPad2d((0, 1, 0, 1))),  # TF "same" with stride 2 pads the bottom/right only
            ("conv", nn.Conv2d(3, 8, 3, stride=2)), ("relu6", nn.ReLU6()),
            ("depthwise", nn.Conv2d(8, 8, 3, padding=1, groups=8)), ("dw_relu", nn.ReLU()),
            ("pointwise", nn.Conv2d(8, 16, 1)), ("pw_relu", nn.ReLU()),
            ("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("dense", nn.Linear(16, CLASSES))]))


def torchscript(model: nn.Module, path: Path, opset: int = 17, constant_folding: bool = True,
                initializers_as_inputs: bool = False, dynamic_size: bool = False) -> Path:
    """Export with the TorchScript exporter, dynamic batch (and height and width with dynamic_size)."""
    dynamic = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), path, dynamo=False, opset_version=opset,
                      do_constant_folding=constant_folding, keep_initializers_as_inputs=initializers_as_inputs,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": dynamic, "logits": {0: "batch"}})
    return path


def sum_joins(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Add of two computed tensors (the residual join) becomes a Sum."""
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node
                                                              if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Add" and not constants & set(node.input):
            node.op_type = "Sum"
    return model


def batchnorm_as_mul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every BatchNormalization becomes x * scale + shift, with [C] constants Unsqueeze'd to [C, 1, 1], as
    converters write a BatchNormalization they do not fuse."""
    params = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, added = [], []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        gamma, beta, mean, var = (params[name].astype(np.float64) for name in node.input[1:5])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        prefix = node.name or node.output[0]
        for name, value in ((f"{prefix}/scale", scale), (f"{prefix}/shift", beta - mean * scale),
                            (f"{prefix}/axes", np.array([1, 2]))):
            added.append(numpy_helper.from_array(value.astype(np.int64 if name.endswith("axes") else np.float32),
                                                 name))
        nodes += [helper.make_node("Unsqueeze", [f"{prefix}/scale", f"{prefix}/axes"], [f"{prefix}/scale_chw"]),
                  helper.make_node("Unsqueeze", [f"{prefix}/shift", f"{prefix}/axes"], [f"{prefix}/shift_chw"]),
                  helper.make_node("Mul", [node.input[0], f"{prefix}/scale_chw"], [f"{prefix}/scaled"]),
                  helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/shift_chw"], [node.output[0]])]
    used = {i for n in nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept + added)
    return model


def constant_node_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a Constant node; those holding one repeated value become ConstantOfShape."""
    nodes = []
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.size > 1 and np.all(value == value.flat[0]):
            shape = numpy_helper.from_array(np.array(value.shape, dtype=np.int64))
            nodes += [helper.make_node("Constant", [], [f"{init.name}/shape"], value=shape),
                      helper.make_node("ConstantOfShape", [f"{init.name}/shape"], [init.name],
                                       value=numpy_helper.from_array(value.reshape(-1)[:1]))]
        else:
            nodes.append(helper.make_node("Constant", [], [init.name], value=init))
    nodes += list(model.graph.node)
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    return model


def single_final_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """The nodes after the last GlobalAveragePool replaced by one Softmax(axis=1) over its [N, K, 1, 1] output,
    which opsets below 13 define as the softmax over everything from axis 1 on (old model-zoo classifiers)."""
    nodes = list(model.graph.node)
    last_pool = max(i for i, n in enumerate(nodes) if n.op_type == "GlobalAveragePool")
    softmax = helper.make_node("Softmax", [nodes[last_pool].output[0]], [model.graph.output[0].name],
                               name="softmax", axis=1)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:last_pool + 1] + [softmax])
    return model


def tf2onnx_graph(model: KerasNet, opset: int = 13) -> onnx.ModelProto:
    """The graph tf2onnx writes for the Keras model whose function `model` computes, with its weights."""
    def weights(name, tensor):
        return numpy_helper.from_array(tensor.detach().numpy().astype(np.float32), name)

    conv, depthwise, pointwise, dense = model.conv, model.depthwise, model.pointwise, model.dense
    initializers = [
        weights("conv/kernel", conv.weight), weights("conv/bias", conv.bias),
        weights("depthwise/kernel", depthwise.weight), weights("depthwise/bias", depthwise.bias),
        weights("pointwise/kernel", pointwise.weight), weights("pointwise/bias", pointwise.bias),
        weights("dense/kernel", dense.weight.T), weights("dense/bias", dense.bias),
        numpy_helper.from_array(np.float32(0.0), "relu6/min"), numpy_helper.from_array(np.float32(6.0), "relu6/max"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "zero_padding2d/pads"),
        numpy_helper.from_array(np.array([-1, 16], dtype=np.int64), "flatten/shape"),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["model/conv/Conv2D__6:0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["model/conv/Conv2D__6:0", "conv/kernel", "conv/bias"], ["model/conv/BiasAdd:0"],
                         name="model/conv/BiasAdd", strides=[2, 2], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        helper.make_node("Clip", ["model/conv/BiasAdd:0", "relu6/min", "relu6/max"], ["model/re_lu/Relu6:0"],
                         name="model/re_lu/Relu6"),
        helper.make_node("Pad", ["model/re_lu/Relu6:0", "zero_padding2d/pads"], ["model/zero_padding2d/Pad:0"],
                         name="model/zero_padding2d/Pad", mode="constant"),
        helper.make_node("Conv", ["model/zero_padding2d/Pad:0", "depthwise/kernel", "depthwise/bias"],
                         ["model/depthwise/BiasAdd:0"], name="model/depthwise/BiasAdd", group=8,
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["model/depthwise/BiasAdd:0"], ["model/re_lu_1/Relu:0"], name="model/re_lu_1/Relu"),
        helper.make_node("Conv", ["model/re_lu_1/Relu:0", "pointwise/kernel", "pointwise/bias"],
                         ["model/pointwise/BiasAdd:0"], name="model/pointwise/BiasAdd", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["model/pointwise/BiasAdd:0"], ["model/re_lu_2/Relu:0"], name="model/re_lu_2/Relu"),
        helper.make_node("Transpose", ["model/re_lu_2/Relu:0"], ["model/re_lu_2/Relu__20:0"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["model/re_lu_2/Relu__20:0"], ["model/global_average_pooling2d/Mean:0"],
                         axes=[1, 2], keepdims=1),
        helper.make_node("Reshape", ["model/global_average_pooling2d/Mean:0", "flatten/shape"],
                         ["model/flatten/Reshape:0"]),
        helper.make_node("MatMul", ["model/flatten/Reshape:0", "dense/kernel"], ["model/dense/MatMul:0"]),
        helper.make_node("Add", ["model/dense/MatMul:0", "dense/bias"], ["model/dense/BiasAdd:0"]),
        helper.make_node("Softmax", ["model/dense/BiasAdd:0"], ["dense"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__42", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__43", CLASSES])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7,
                             producer_name="tf2onnx")


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}
