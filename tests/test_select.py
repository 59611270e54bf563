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
    chosen = resolve(canonical, ["auto"])[0]
    assert chosen.key == "auto" and chosen.tensor == tensor_of(canonical, "layer4")  # docs/design.md section 2


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


def tf2onnx_pooled_tail(pool: str = "AveragePool") -> "onnx.ModelProto":
    """What tf2onnx writes for a Keras classifier on an NHWC input: Transpose to NCHW, Conv, Relu, a pool over the
    whole 8 x 8 grid, then the pooled [N, C, 1, 1] features reshaped to Keras's [N, 1, 1, C] and flattened (its
    optimizer turns the Transpose back to NHWC into that Reshape), MatMul. Opset 9, as old conversions are."""
    import numpy as np
    from onnx import TensorProto
    rng = np.random.default_rng(0)
    initializers = [helper.make_tensor("kernel", TensorProto.FLOAT, [8, 3, 3, 3], rng.normal(size=216)),
                    helper.make_tensor("nhwc_shape", TensorProto.INT64, [4], [-1, 1, 1, 8]),
                    helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 8]),
                    helper.make_tensor("dense", TensorProto.FLOAT, [8, 5], rng.normal(size=40))]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "kernel"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node(pool, ["relu"], ["pooled"], **({"kernel_shape": [8, 8]} if pool == "AveragePool"
                                                             else {})),
             helper.make_node("Reshape", ["pooled", "nhwc_shape"], ["pooled_nhwc"]),
             helper.make_node("Reshape", ["pooled_nhwc", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "dense"], ["logits"])]
    graph = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["unk__1", 8, 8, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__2", 5])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=5)


@pytest.mark.parametrize("pool", ["AveragePool", "GlobalAveragePool"])
def test_auto_is_the_last_grid_before_pooling_in_nhwc_graphs(pool):
    """The pooled features reshaped to [N, 1, 1, C] have 1 x C where an NCHW tensor has its grid: no layer."""
    canonical = canonicalize(infer_shapes(load(tf2onnx_pooled_tail(pool))))
    assert [c.tensor for c in candidates(canonical)] == ["nchw", "conv", "relu"]
    assert tensor_of(canonical, "auto") == "relu"


def test_no_layer_says_what_the_path_holds():
    """A classifier that pools the image at once: the message lists the 4-D tensors and why none is a layer."""
    import numpy as np
    from onnx import TensorProto
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Reshape", ["pooled", "nhwc_shape"], ["pooled_nhwc"]),
             helper.make_node("Reshape", ["pooled_nhwc", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "dense"], ["logits"])]
    initializers = [helper.make_tensor("nhwc_shape", TensorProto.INT64, [4], [-1, 1, 1, 3]),
                    helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 3]),
                    helper.make_tensor("dense", TensorProto.FLOAT, [3, 5], np.ones(15))]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                              ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(LayerSelectionError) as error:
        resolve(canonicalize(infer_shapes(load(model))), ["auto"])
    message = str(error.value)
    assert "no layer to explain" in message and "pooled ['N', 3, 1, 1] (a 1 x 1 grid)" in message
    assert "pooled_nhwc ['unk__0', 1, 1, 3] (not on the image's grid)" in message
    assert "Ops on the path: GlobalAveragePool, MatMul, Reshape" in message


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def vit(request, export_dir):
    import families
    model = families.randomize(families.VisionTransformer(), seed=3)
    path = zoo.export(model, export_dir / f"select-vit-{request.param}.onnx", request.param,
                      input_shape=(1, 3, 32, 32))
    return path, canonicalize(infer_shapes(load(path)))


def test_token_layers_know_their_patch_grid(vit):
    """[N, 17, 24] tokens: a class token, then 4 x 4 patches of the 8 x 8 patch-embedding Conv on 32 x 32 images
    (before the class token joins, [N, 16, 24]); the Conv's output flattened to [N, 24, 16] is no token layer, nor
    are the attention heads' 4-D tensors."""
    _, canonical = vit
    options = candidates(canonical)
    tokens = [c for c in options if c.tokens is not None]
    assert tokens and all(c.shape[1:] in ((16, 24), (17, 24), (17, 48), (17, 72)) for c in tokens)
    assert (1, 4, 4, 17) in {(c.tokens.prefix, c.tokens.height, c.tokens.width, c.shape[1]) for c in tokens}
    assert {(c.tokens.prefix, c.tokens.height, c.tokens.width, c.shape[1]) for c in tokens} <= {(0, 4, 4, 16),
                                                                                              (1, 4, 4, 17)}
    grids = [c for c in options if c.tokens is None]
    assert [c.op for c in grids] == ["Conv"] and grids[0].shape[1:] == (24, 4, 4)  # the patch embedding only


def test_auto_on_a_transformer_is_the_last_blocks_normalised_input(vit):
    """After the last block only the class token reaches the head: the patches of the last token layers get no
    relevance. auto is the last block's norm1 output, the input of the last attention."""
    _, canonical = vit
    chosen = [c for c in candidates(canonical) if c.tensor == tensor_of(canonical, "auto")][0]
    assert chosen.scope == "blocks.2.norm1" and chosen.op == "LayerNormalization"


def test_token_layer_outputs_are_patch_images(vit):
    """Per layer: activation and relevance [N, D, 4, 4], raw [N, 4, 4], map [N, 32, 32]; with top_k the maps gain
    their K axis and the activation stays per sample."""
    import numpy as np
    import onnx_rcam
    from conftest import run_model
    path, _ = vit
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    out = run_model(onnx_rcam.augment(path, layers=["blocks.1"], top_k=2), {"input": x})
    assert out["rcam/blocks.1/activation"].shape == (3, 24, 4, 4)
    assert out["rcam/blocks.1/relevance"].shape == (3, 2, 24, 4, 4)
    assert out["rcam/blocks.1/raw"].shape == (3, 2, 4, 4) and out["rcam/blocks.1/map"].shape == (3, 2, 32, 32)
    single = run_model(onnx_rcam.augment(path, layers=["blocks.1"]), {"input": x})
    np.testing.assert_allclose(out["rcam/blocks.1/relevance"][:, 0], single["rcam/blocks.1/relevance"], rtol=1e-5,
                               atol=1e-7)


@pytest.fixture(scope="module", params=[(layout, exporter) for layout in ("swin", "swin_tokens")
                                        for exporter in ("torchscript", "dynamo")], ids=lambda p: "-".join(p))
def swin(request, export_dir):
    import families
    layout, exporter = request.param
    model = families.randomize(families.FAMILIES[layout].build(), seed=5)
    path = zoo.export(model, export_dir / f"select-{layout}-{exporter}.onnx", exporter, input_shape=(1, 3, 32, 32))
    return layout, canonicalize(infer_shapes(load(path))), path


def test_swin_layers_lie_on_the_image_grid(swin):
    """A Swin on 32 x 32 images, patches of 4, window 4, one patch merging: every layer is the 8 x 8 patch grid or
    the 4 x 4 grid after merging, laid out [N, h, w, C] or as [N, h * w, C] tokens. Not layers: the windows
    [N * 4, 16, C] of the first stage (axis 0 is not the batch), the rolls of the shifted windows (Concats along the
    grid, which move every position) and their halves, and merging's 4 x 8 rows before it strides the columns."""
    layout, canonical, _ = swin
    options = candidates(canonical)
    tokens = [c for c in options if c.tokens is not None]
    assert [c for c in options if c.tokens is None] == [options[0]] and options[0].op == "Conv"
    assert {(c.tokens.height, c.tokens.width) for c in tokens} == {(8, 8), (4, 4)}
    first_stage = [c for c in tokens if c.scope.startswith(("layers.0.0", "layers.0.1"))]
    assert first_stage and all((c.tokens.height, c.tokens.width) == (8, 8) for c in first_stage)
    assert not [c for c in first_stage if c.op == "Concat"]
    if layout == "swin":
        assert all(c.tokens.channels_last == (len(c.shape) == 4) for c in tokens)
        assert {c.tokens.describe() for c in tokens} >= {"8x8 channels-last", "4x4 channels-last"}
    else:
        assert all(c.shape[1] == c.tokens.height * c.tokens.width for c in tokens if len(c.shape) == 3)


def test_auto_on_a_swin_is_the_last_norm(swin):
    """No class token: the head averages the last stage's patches, as a CNN pools its last grid."""
    _, canonical, _ = swin
    chosen = [c for c in candidates(canonical) if c.tensor == tensor_of(canonical, "auto")][0]
    assert chosen.scope == "norm" and (chosen.tokens.height, chosen.tokens.width) == (4, 4)
    assert tensor_of(canonical, "layers.0") == [c for c in candidates(canonical)
                                                if c.scope == "layers.0.2.reduction"][-1].tensor


def test_swin_top_k_is_k_single_runs(swin):
    """With top_k, the backward runs on N * K rows while the windows hold N * 4 of them: each explained class's
    maps are those of a run that explains that class alone, bit for bit, through the shifted windows too."""
    import numpy as np
    import onnx_rcam
    from conftest import run_model
    _, _, path = swin
    x = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
    for method in ("rcam", "gradcam"):
        layers = ["layers.0.0", "layers.1"]  # layers.0.0's relevance comes through layers.0.1's 4 shifted windows
        both = run_model(onnx_rcam.augment(path, layers=layers, top_k=2, methods=[method]), {"input": x})
        single = onnx_rcam.augment(path, layers=layers, methods=[method])
        for k in range(2):
            alone = run_model(single, {"input": x, "rcam/target": both["rcam/class"][:, k]})
            for layer in layers:
                np.testing.assert_array_equal(both[f"{method}/{layer}/raw"][:, k], alone[f"{method}/{layer}/raw"])
