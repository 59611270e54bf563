"""Graph styles (tests/styles.py) against the independent reference: every way of writing the same network must
give the same relevance, raw maps and maps, and keep the original outputs bit for bit."""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import pytest
import torch

import onnx_rcam
import reference
import styles
import zoo
from conftest import assert_close, record_deviation, run_model

BATCH = 3


@functools.cache
def randomized(cls):
    """The model, a well-conditioned batch with per-sample targets for rcam/target, and the reference on it.

    Every other BatchNorm channel gets a negative scale: folding it into the conv then flips the signs z+ sees, so
    a graph style whose BatchNormalization is not folded gives other relevance than the reference.
    """
    model = zoo.randomize(cls(), seed=sum(map(ord, cls.__name__)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight[::2] *= -1
    return (model, *batch_and_reference(model))


def batch_and_reference(model):
    layers = list(type(model).layers)
    x, targets, classes = reference.well_conditioned_batch(model, layers, BATCH, styles.SIZE, seed=3)
    return x, targets, reference.reference(model, x, layers, targets=classes)


def check(path_or_model, cls, layer_names=None, channels_last=False, reference_model=None, **options):
    """Augment, run, and hold every output to the reference; layer_names maps the reference's module paths to
    the selectors the ONNX graph knows them by (the same by default). reference_model: the torch model the ONNX
    graph computes, where it is not randomized(cls)'s."""
    if reference_model is None:
        _, x, targets, ref = randomized(cls)
    else:
        x, targets, ref = batch_and_reference(reference_model)
    layer_names = layer_names or {layer: layer for layer in cls.layers}
    feed = x.transpose(0, 2, 3, 1).copy() if channels_last else x
    source = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    image = source.graph.input[0].name
    plain = run_model(source, {image: feed})[source.graph.output[0].name]

    augmented = onnx_rcam.augment(path_or_model, layers=list(layer_names.values()), **options)
    onnx.checker.check_model(augmented, full_check=True)
    out = run_model(augmented, {image: feed, "rcam/target": targets})
    assert np.array_equal(out[source.graph.output[0].name], plain), "original output changed"
    np.testing.assert_array_equal(out["rcam/class"], ref.classes)
    worst = 0.0
    for layer, selector in layer_names.items():
        worst = max(worst,
                    assert_close(out[f"rcam/{selector}/activation"], ref.activations[layer], f"{layer} activation"),
                    assert_close(out[f"rcam/{selector}/relevance"], ref.relevance[layer], f"{layer} relevance"),
                    assert_close(out[f"rcam/{selector}/raw"], ref.raw[layer], f"{layer} raw"),
                    assert_close(out[f"rcam/{selector}/map"], ref.maps[layer], f"{layer} map"))
    style = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    record_deviation("graph styles", style, worst)
    return augmented


@pytest.mark.parametrize("opset", range(7, 22))
def test_opsets(opset, tmp_path):
    """Opsets 7 to 21; 7 and 8 are IR 3, which lists every initializer among the graph inputs, and keep
    BatchNormalization (TorchScript folds it only from opset 9)."""
    model, *_ = randomized(styles.StyleNet)
    path = styles.torchscript(model, tmp_path / "model.onnx", opset=opset)
    written = onnx.load(str(path))
    assert written.opset_import[0].version == opset
    if opset <= 8:
        assert written.ir_version == 3 and len(written.graph.input) > 1
    check(path, styles.StyleNet)


def test_initializers_listed_as_inputs(tmp_path):
    """IR 4 and later: initializers that are also inputs (overridable weights) are not image inputs."""
    model, *_ = randomized(styles.StyleNet)
    path = styles.torchscript(model, tmp_path / "model.onnx", initializers_as_inputs=True)
    assert len(onnx.load(str(path)).graph.input) > 1
    check(path, styles.StyleNet)


def test_external_data(tmp_path):
    model, *_ = randomized(styles.StyleNet)
    exported = onnx.load(str(styles.torchscript(model, tmp_path / "exported.onnx")))
    onnx.save(exported, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.weights", size_threshold=0)
    assert (tmp_path / "model.weights").stat().st_size > 1000
    check(tmp_path / "model.onnx", styles.StyleNet)


def test_sum_joins(tmp_path):
    model, *_ = randomized(styles.StyleNet)
    written = styles.sum_joins(onnx.load(str(styles.torchscript(model, tmp_path / "model.onnx"))))
    assert "Sum" in styles.ops(written)
    check(written, styles.StyleNet)


def test_batchnorm_written_as_mul_and_add(tmp_path):
    model, *_ = randomized(styles.StyleNet)
    unfolded = onnx.load(str(styles.torchscript(model, tmp_path / "model.onnx", constant_folding=False)))
    written = styles.batchnorm_as_mul_add(unfolded)
    assert "BatchNormalization" not in styles.ops(written) and {"Mul", "Unsqueeze"} <= styles.ops(written)
    check(written, styles.StyleNet)


def test_shapes_from_constant_nodes_and_shape_chains(tmp_path):
    """Without constant folding, TorchScript keeps Constant nodes and the view's Shape -> Gather -> Concat chain."""
    model, *_ = randomized(styles.StyleNet)
    path = styles.torchscript(model, tmp_path / "model.onnx", constant_folding=False)
    assert {"Constant", "Shape", "Gather", "Concat", "Reshape"} <= styles.ops(onnx.load(str(path)))
    check(path, styles.StyleNet)


def test_weights_from_constant_and_constant_of_shape_nodes(tmp_path):
    model, *_ = randomized(styles.StyleNet)
    uniform_bias = styles.StyleNet()
    uniform_bias.load_state_dict(model.state_dict())
    with torch.no_grad():
        uniform_bias.fc.bias.fill_(0.25)
    written = styles.constant_node_weights(
        onnx.load(str(styles.torchscript(uniform_bias.eval(), tmp_path / "model.onnx"))))
    assert not written.graph.initializer and {"Constant", "ConstantOfShape"} <= styles.ops(written)
    check(written, styles.StyleNet, reference_model=uniform_bias)


def test_class_scores_kept_4d_up_to_softmax(tmp_path):
    model, *_ = randomized(styles.ConvScoresNet)
    four_d = styles.ConvScoresNet()
    four_d.load_state_dict(model.state_dict())
    four_d.four_d = True
    path = styles.torchscript(four_d.eval(), tmp_path / "model.onnx")
    written = onnx.load(str(path))
    assert len(written.graph.output[0].type.tensor_type.shape.dim) == 4 and "Softmax" in styles.ops(written)
    augmented = check(written, styles.ConvScoresNet)
    # The Flatten that makes the scores [N, K] exists only for the generated nodes: the model's output stays 4-D.
    assert len(augmented.graph.output[0].type.tensor_type.shape.dim) == 4


@pytest.mark.parametrize("opset", [9, 11, 12])
@pytest.mark.parametrize("single_softmax", [False, True], ids=["as_exported", "single_softmax"])
def test_final_softmax_of_old_opsets_on_4d_scores(opset, single_softmax, tmp_path):
    """Before opset 13 a Softmax flattens its input from `axis` on. Old model-zoo classifiers end Conv -> Relu ->
    GlobalAveragePool -> Softmax(axis=1) on [N, K, 1, 1] (single_softmax; onnx's version converter writes it as
    Flatten -> Softmax -> Reshape), and TorchScript writes softmax(dim=1) there as Transpose -> Softmax ->
    Transpose. Either way relevance starts at the scores before the Softmax."""
    model, *_ = randomized(styles.ConvScoresNet)
    four_d = styles.ConvScoresNet()
    four_d.load_state_dict(model.state_dict())
    four_d.four_d = True
    written = onnx.load(str(styles.torchscript(four_d.eval(), tmp_path / "model.onnx", opset=opset)))
    if single_softmax:
        written = styles.single_final_softmax(written)
        assert [n.op_type for n in written.graph.node][-2:] == ["GlobalAveragePool", "Softmax"]
    augmented = check(written, styles.ConvScoresNet)
    assert len(augmented.graph.output[0].type.tensor_type.shape.dim) == 4


def test_tf2onnx_nhwc_graph():
    model, *_ = randomized(styles.KerasNet)
    written = styles.tf2onnx_graph(model)
    onnx.checker.check_model(written, full_check=True)
    augmented = check(written, styles.KerasNet, layer_names=dict(styles.KerasNet.layers), channels_last=True)
    maps = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in augmented.graph.output}
    assert maps["rcam/model/re_lu/Relu6:0/map"][1:] == [styles.SIZE, styles.SIZE]


def test_tf2onnx_layer_candidates_are_channel_first():
    """The NHWC tensors (the image, the Transpose back before pooling) are no layers: `auto` is the last ReLU."""
    model, *_ = randomized(styles.KerasNet)
    written = styles.tf2onnx_graph(model)
    tensors = [c.tensor for c in onnx_rcam.candidate_layers(written)]
    assert "model/re_lu_2/Relu__20:0" not in tensors and tensors[-1] == "model/re_lu_2/Relu:0"


def test_dynamic_height_and_width_need_input_shape(tmp_path):
    model, *_ = randomized(styles.StyleNet)
    path = styles.torchscript(model, tmp_path / "model.onnx", dynamic_size=True)
    with pytest.raises(onnx_rcam.ModelError, match=r"--input-shape .*N,3,224,224"):
        onnx_rcam.augment(path)
    augmented = check(path, styles.StyleNet, input_shape=("N", 3, styles.SIZE, styles.SIZE))
    dims = augmented.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, styles.SIZE, styles.SIZE]


def test_input_shape_must_fit_the_model(tmp_path):
    model, *_ = randomized(styles.StyleNet)
    path = styles.torchscript(model, tmp_path / "model.onnx", dynamic_size=True)
    with pytest.raises(onnx_rcam.ModelError, match="fixes at 3"):
        onnx_rcam.augment(path, input_shape=("N", 4, 32, 32))
    with pytest.raises(onnx_rcam.ModelError, match="3 dimensions"):
        onnx_rcam.augment(path, input_shape=(3, 32, 32))



def test_explainer_feeds_nhwc_models(tmp_path):
    """Explainer reads the layout from the graph: photos go in as NHWC, maps come out at the input's H x W."""
    model, *_ = randomized(styles.KerasNet)
    onnx.save(styles.tf2onnx_graph(model), tmp_path / "keras.onnx")
    explainer = onnx_rcam.Explainer(tmp_path / "keras.onnx", device="cpu", preprocessing="unit")
    assert explainer.preprocessing.layout == "NHWC"
    photo = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    explanation = explainer([photo, photo[::-1]])
    heat = explanation.maps["auto"]
    assert heat.shape == (2, styles.SIZE, styles.SIZE) and 0 <= heat.min() and heat.max() <= 1
