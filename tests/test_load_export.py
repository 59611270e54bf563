"""Loading (files, protos, external data, old opsets, bad models) and the exported interface."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnx_rcam
import reference
from conftest import assert_close, run_model
from onnx_rcam import ModelError, RcamError
from onnx_rcam.export import save
from onnx_rcam.load import default_opset, load


def classifier(opset: int = 17, scores_shape=("n", 5)) -> onnx.ModelProto:
    """x -> Conv -> Relu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("MaxPool", ["act"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["pool"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["scores"])]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(scores_shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def torch_classifier() -> nn.Module:
    """classifier() in torch, with its very weights, for reference.py: the module paths name the ONNX tensors."""
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in classifier().graph.initializer}
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 6, 3, padding=1, bias=False))
    for name, module in (("act", nn.ReLU()), ("pool", nn.MaxPool2d(2, 2)), ("gap", nn.AdaptiveAvgPool2d(1)),
                         ("flat", nn.Flatten()), ("scores", nn.Linear(6, 5, bias=False))):
        model.add_module(name, module)
    with torch.no_grad():
        model.conv.weight.copy_(weights["w"])
        model.scores.weight.copy_(weights["fc"].T)  # Gemm without transB: flat @ fc
    return model.eval()


def image(n: int = 3) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(n, 3, 8, 8)).astype(np.float32)


def test_proto_input_is_not_modified():
    model = classifier()
    before = model.SerializeToString()
    onnx_rcam.augment(model, layers=["act"])
    assert model.SerializeToString() == before


def test_external_data_is_loaded(tmp_path):
    onnx.save(classifier(), tmp_path / "external.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.bin", size_threshold=0)
    augmented = onnx_rcam.augment(tmp_path / "external.onnx", layers=["act"])
    np.testing.assert_array_equal(run_model(augmented, {"x": image()})["scores"],
                                  run_model(classifier(), {"x": image()})["scores"])


def test_old_opset_is_upgraded_and_outputs_stay_exact():
    old = classifier(opset=13)
    augmented = onnx_rcam.augment(old, layers=["act"])
    assert max(o.version for o in augmented.opset_import if o.domain in ("", "ai.onnx")) == 17
    out = run_model(augmented, {"x": image()})
    np.testing.assert_array_equal(out["scores"], run_model(old, {"x": image()})["scores"])
    assert out["rcam/act/map"].shape == (3, 8, 8)


def test_interface_matches_the_contract():
    augmented = onnx_rcam.augment(classifier(), layers=["act", "pool"])
    onnx.checker.check_model(augmented, full_check=True)
    outputs = {o.name: o.type.tensor_type for o in augmented.graph.output}
    assert list(outputs)[0] == "scores"
    assert outputs["rcam/class"].elem_type == TensorProto.INT64
    for key, rank in (("act", 4), ("pool", 4)):
        for part, part_rank in (("map", 3), ("raw", 3), ("relevance", rank), ("activation", rank)):
            assert outputs[f"rcam/{key}/{part}"].elem_type == TensorProto.FLOAT
            assert len(outputs[f"rcam/{key}/{part}"].shape.dim) == part_rank
    target = next(i for i in augmented.graph.input if i.name == "rcam/target")
    assert target.type.tensor_type.elem_type == TensorProto.INT64
    default = next(t for t in augmented.graph.initializer if t.name == "rcam/target")
    assert numpy_helper.to_array(default).tolist() == [-1]
    generated = [n for n in augmented.graph.node if n.name.startswith("rcam/")]
    assert generated and all(o.startswith("rcam/") for n in generated for o in n.output)


def test_target_input_is_optional_and_per_sample():
    """Without rcam/target each sample's prediction is explained, with it each sample's own class (-1: the
    prediction); either way the relevance, raw map and map are the reference's for those classes (sample 0's
    differ: 4 is not its prediction)."""
    augmented = onnx_rcam.augment(classifier(), layers=["act"])
    plain = run_model(classifier(), {"x": image()})["scores"]
    default = run_model(augmented, {"x": image()})
    np.testing.assert_array_equal(default["rcam/class"], plain.argmax(1))
    chosen = run_model(augmented, {"x": image(), "rcam/target": np.array([4, -1, 0], dtype=np.int64)})
    np.testing.assert_array_equal(chosen["rcam/class"], [4, plain[1].argmax(), 0])
    assert plain[0].argmax() != 4
    for out in (default, chosen):
        ref = reference.reference(torch_classifier(), image(), ["act"], targets=out["rcam/class"])
        for part, expected in (("relevance", ref.relevance), ("raw", ref.raw), ("map", ref.maps)):
            assert_close(out[f"rcam/act/{part}"], expected["act"], f"classes {out['rcam/class']} {part}")


def drop_input_shape(model):
    model.graph.input[0].type.tensor_type.shape.ClearField("dim")


def read_a_missing_tensor(model):
    model.graph.node[0].input[1] = "missing"


@pytest.mark.parametrize("broken, message", [
    (drop_input_shape, "exactly one 4-D image input"),
    (read_a_missing_tensor, "onnx.checker"),
])
def test_bad_models_are_refused(broken, message):
    model = classifier()
    broken(model)
    with pytest.raises(ModelError, match=message):
        onnx_rcam.augment(model)


def test_scores_must_be_class_scores():
    model = classifier()
    model.graph.node.append(helper.make_node("Unsqueeze", ["scores", "axes"], ["scores3d"]))
    model.graph.node.append(helper.make_node("Concat", ["scores3d", "scores3d"], ["pairs"], axis=2))
    model.graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("pairs", TensorProto.FLOAT, ["n", 5, 2]))
    with pytest.raises(ModelError, match=r"class scores of shape \[N, K\] or \[N, K, 1, 1\]"):
        onnx_rcam.augment(model)


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path):
    model = onnx_rcam.augment(classifier(), layers=["act"])
    target = tmp_path / "out.onnx"
    save(model, target)
    first = target.read_bytes()
    with pytest.raises(RcamError, match="--force"):
        save(model, target)
    with pytest.raises(RcamError, match="does not exist"):
        save(model, tmp_path / "no" / "such" / "out.onnx")
    save(model, target, force=True)
    assert target.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_saved_file_has_the_usual_permissions(tmp_path):
    """The temporary file's private mode does not survive the rename: the model gets 0666 less the umask."""
    previous = os.umask(0o022)
    try:
        target = save(onnx_rcam.augment(classifier(), layers=["act"]), tmp_path / "out.onnx")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_an_unused_custom_opset_import_does_not_stop_the_upgrade():
    """Paddle2ONNX imports ('Paddle', 1) without using it; onnx's version converter knows no such domain."""
    model = classifier(opset=11)
    model.opset_import.append(helper.make_opsetid("Paddle", 1))
    loaded = load(model)
    assert default_opset(loaded) == 17 and "Paddle" not in {e.domain for e in loaded.opset_import}
    np.testing.assert_allclose(run_model(onnx_rcam.augment(model, layers=["act"]), {"x": image()})["scores"],
                               run_model(classifier(opset=11), {"x": image()})["scores"], rtol=1e-6)


def test_saving_leaves_the_process_umask_alone(tmp_path, monkeypatch):
    """Reading the umask means setting it, for the whole process (racy in a threaded host): save never does."""
    def refuse(*_):
        raise AssertionError("save set the process-wide umask")

    monkeypatch.setattr(os, "umask", refuse)
    save(onnx_rcam.augment(classifier(), layers=["act"]), tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_seed_is_the_initial_relevance_where_fed(tmp_path):
    """rcam/seed, shaped like the class scores: a one-hot seed gives exactly `initial="onehot"` with that target,
    for rcam and for the gradient methods (the weights of the explained scores); NaN entries (the stored default)
    keep the default initial relevance; with top_k the seed gains the K axis."""
    model = classifier()
    x = image()
    targets = np.array([1, 4, 0], dtype=np.int64)
    seed = np.eye(5, dtype=np.float32)[targets]
    methods = ["rcam", "gradcam"]
    onehot = run_model(onnx_rcam.augment(model, ["act"], initial="onehot", methods=methods),
                       {"x": x, "rcam/target": targets})
    contrastive = onnx_rcam.augment(model, ["act"], methods=methods)
    seeded = run_model(contrastive, {"x": x, "rcam/target": targets, "rcam/seed": seed})
    plain = run_model(contrastive, {"x": x, "rcam/target": targets})
    for part in ("rcam/act/relevance", "gradcam/act/gradient"):
        np.testing.assert_allclose(seeded[part], onehot[part], rtol=1e-6, atol=1e-9)
    partly = seed.copy()
    partly[1] = np.nan  # sample 1 keeps the contrastive default
    mixed = run_model(contrastive, {"x": x, "rcam/target": targets, "rcam/seed": partly})
    np.testing.assert_array_equal(mixed["rcam/act/relevance"][1], plain["rcam/act/relevance"][1])
    np.testing.assert_array_equal(mixed["rcam/act/relevance"][0], seeded["rcam/act/relevance"][0])
    # The two defaults' values: the reference's onehot and contrastive relevance, and the autograd gradient.
    for out, initial in ((seeded, "onehot"), (plain, "contrastive")):
        assert_close(out["rcam/act/relevance"],
                     reference.reference(torch_classifier(), x, ["act"], targets, initial=initial).relevance["act"],
                     f"{initial} relevance")
    assert_close(seeded["gradcam/act/gradient"],
                 reference.gradients(torch_classifier(), x, ["act"], targets)[1]["act"].numpy(), "gradient")

    top2 = onnx_rcam.augment(model, ["act"], top_k=2)
    pairs = np.stack([np.eye(5, dtype=np.float32)[[1, 2]]] * 3)  # [N, K, classes]
    out = run_model(top2, {"x": x, "rcam/seed": pairs})
    for k, target in enumerate((1, 2)):
        single = run_model(onnx_rcam.augment(model, ["act"], initial="onehot"),
                           {"x": x, "rcam/target": np.full(3, target, np.int64)})
        np.testing.assert_allclose(out["rcam/act/relevance"][:, k], single["rcam/act/relevance"], rtol=1e-6,
                                   atol=1e-9)
