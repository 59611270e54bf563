"""Layer selectors on real exports of both torch exporters, and the candidate list."""

from __future__ import annotations

import pytest
from onnx import helper

import zoo
from onnx_rcam import LayerSelectionError
from onnx_rcam.canonicalize import canonicalize, module_path
from onnx_rcam.load import infer_shapes, load
from onnx_rcam.select import candidates, region, resolve


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def resnet(request, export_dir):
    model = zoo.randomize(zoo.resnet18(0.125, num_classes=10), seed=1)
    path = zoo.export(model, export_dir / f"select-resnet18-{request.param}.onnx", request.param,
                      input_shape=(1, 3, 64, 64))
    return request.param, canonicalize(infer_shapes(load(path)))


def tensor_of(canonical, selector: str) -> str:
    return resolve(canonical, [selector])[0].tensor


@pytest.mark.parametrize("node_name, path", [
    ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
    ("/features/features.1/conv/conv.0/conv.0.0/Conv", "features.1.conv.0.0"),  # Sequentials below the root
    ("/fc/Gemm", "fc"), ("Conv_12", "")])
def test_module_path_from_torchscript_node_names(node_name, path):
    assert module_path(helper.make_node("Conv", ["x", "w"], ["y"], name=node_name)) == path


def test_module_paths_pick_the_last_tensor_of_the_scope(resnet):
    exporter, canonical = resnet
    options = {c.tensor: c for c in candidates(canonical)}
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        chosen = options[tensor_of(canonical, stage)]
        assert chosen.op == "Relu" and chosen.scope == f"{stage}.1.relu2", (exporter, chosen)
    assert options[tensor_of(canonical, "layer2.0")].scope == "layer2.0.relu2"


def test_auto_is_the_last_grid_before_global_pooling(resnet):
    _, canonical = resnet
    assert tensor_of(canonical, "auto") == tensor_of(canonical, "layer4")
    assert resolve(canonical, ["auto"])[0].key == tensor_of(canonical, "layer4")


def test_candidates_list_shapes_and_downsampling(resnet):
    _, canonical = resnet
    options = candidates(canonical)
    assert [c.index for c in options] == list(range(len(options)))
    layer4 = next(c for c in options if c.tensor == tensor_of(canonical, "layer4"))
    assert layer4.shape[1:] == (64, 2, 2) and layer4.downsampling == 32
    assert all(c.shape[2] * c.shape[3] > 1 for c in options)


def test_tensor_node_and_index_selectors(resnet):
    _, canonical = resnet
    options = candidates(canonical)
    assert tensor_of(canonical, "-1") == options[-1].tensor
    assert tensor_of(canonical, f"-{len(options)}") == options[0].tensor
    chosen = options[5]
    assert tensor_of(canonical, chosen.tensor) == chosen.tensor
    producer = canonical.graph.tensors()[chosen.tensor].inputs[0]
    assert tensor_of(canonical, producer.name) == chosen.tensor


def test_keys_are_the_selectors_and_duplicates_collapse(resnet):
    _, canonical = resnet
    targets = resolve(canonical, ["layer4", "-1", "layer4"])
    assert [t.key for t in targets] == ["layer4", "-1"]
    assert targets[0].tensor == targets[1].tensor


@pytest.mark.parametrize("selector, message", [
    ("layer9", "Did you mean 'layer4'"),
    ("-999", "out of range"),
    ("nothing_like_it", "onnx-rcam layers"),
])
def test_unknown_selectors_explain_themselves(resnet, selector, message):
    with pytest.raises(LayerSelectionError, match=message):
        resolve(resnet[1], [selector])


def test_region_stops_at_the_shallowest_target(resnet):
    _, canonical = resnet
    deep = region(canonical, resolve(canonical, ["layer4"]))
    shallow = region(canonical, resolve(canonical, ["layer2", "layer4"]))
    assert deep < shallow
    assert tensor_of(canonical, "layer3") in shallow and tensor_of(canonical, "layer3") not in deep
    assert tensor_of(canonical, "layer1") not in shallow
