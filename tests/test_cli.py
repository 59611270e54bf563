"""The onnx-rcam command line, through its real entry point."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import torch
import torch.nn.functional as F

from conftest import run_model
from reference import zbox_rule
from onnx_rcam.console.cli import run


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def tiny(tmp_path):
    """x -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, as a file."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.normal(size=108).astype(np.float32)),
             helper.make_tensor("fc", TensorProto.FLOAT, [4, 5], rng.normal(size=20).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"], name="relu"),
             helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 5])], inits)
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_augment_writes_beside_the_model_and_reports(capsys, tiny):
    code, out, err = cli(capsys, "augment", str(tiny))
    assert code == 0, err
    written = tiny.with_name("tiny.rcam.onnx")
    assert written.is_file()
    assert "rcam/auto/map" in out and str(written) in out and "rcam/target" in out
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    outputs = run_model(str(written), {"x": x})
    assert outputs["rcam/auto/map"].shape == (2, 8, 8)
    np.testing.assert_array_equal(outputs["probs"], run_model(str(tiny), {"x": x})["probs"])


def test_augment_adds_several_methods(capsys, tiny):
    """--method, repeated: Grad-CAM and Relevance-CAM in one file. Here the class score is fc[:, t] . mean_hw(act),
    so its gradient at act is fc[k, t] / 64 everywhere, and Grad-CAM's raw map is sum_k fc[k, t] / 64 * act_k."""
    code, out, err = cli(capsys, "augment", str(tiny), "--method", "gradcam", "--method", "rcam")
    assert code == 0, err
    assert "gradcam/auto/gradient" in out and "rcam/auto/relevance" in out
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    outputs = run_model(str(tiny.with_name("tiny.rcam.onnx")), {"x": x})
    fc = onnx.numpy_helper.to_array(onnx.load(tiny).graph.initializer[1])
    weights = fc[:, outputs["rcam/class"]].T  # [N, C]
    np.testing.assert_allclose(outputs["gradcam/auto/gradient"],
                               np.broadcast_to(weights[:, :, None, None] / 64, (2, 4, 8, 8)), rtol=1e-6)
    np.testing.assert_allclose(outputs["gradcam/auto/raw"],
                               np.einsum("nc,nchw->nhw", weights / 64, outputs["gradcam/auto/activation"]),
                               rtol=1e-5, atol=1e-7)
    assert {"rcam/auto/map", "gradcam/auto/map"} <= set(outputs)


def test_augment_input_heatmap_with_the_preprocessing_bounds(capsys, tiny):
    """--layer input --method lrp under epsilon_gamma_box: the first Conv takes zbox with the bounds of --preprocess
    (unit: pixels in [0, 1]), checked against the zbox formula from the relevance that reaches the conv's output."""
    code, out, err = cli(capsys, "augment", str(tiny), "--layer", "input", "--layer", "act", "--method", "lrp",
                         "--composite", "epsilon_gamma_box", "--preprocess", "unit")
    assert code == 0, err
    x = np.random.default_rng(3).uniform(size=(2, 3, 8, 8)).astype(np.float32)
    outputs = run_model(str(tiny.with_name("tiny.rcam.onnx")), {"x": x})
    weight = torch.as_tensor(onnx.numpy_helper.to_array(onnx.load(tiny).graph.initializer[0])).double()
    expected = zbox_rule(lambda v, w: F.conv2d(v, w, padding=1), torch.as_tensor(x).double(), weight,
                         torch.as_tensor(outputs["lrp/act/relevance"]).double(), 0.0, 1.0)
    np.testing.assert_allclose(outputs["lrp/input/relevance"], expected.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(outputs["lrp/input/raw"], expected.sum(1).numpy(), rtol=1e-4, atol=1e-6)
    assert outputs["lrp/input/map"].shape == (2, 8, 8)
    code, _, err = cli(capsys, "augment", str(tiny), "--composite", "epsilon_gamma_box", "--preprocess", "nope",
                       "--force")
    assert code == 1 and "unknown preprocessing preset 'nope'" in err


def test_augment_never_overwrites_without_force(capsys, tiny):
    target = tiny.with_name("out.onnx")
    target.write_bytes(b"precious")
    code, _, err = cli(capsys, "augment", str(tiny), "-o", str(target))
    assert code == 1 and "--force" in err
    assert target.read_bytes() == b"precious"
    code, _, err = cli(capsys, "augment", str(tiny), "-o", str(target), "--force", "--layer", "conv")
    assert code == 0, err
    assert "rcam/conv/map" in {o.name for o in onnx.load(target).graph.output}


def test_augment_leaves_the_input_untouched(capsys, tiny):
    before = tiny.read_bytes()
    assert cli(capsys, "augment", str(tiny), "--layer", "-1", "--composite", "epsilon_plus")[0] == 0
    assert tiny.read_bytes() == before


@pytest.mark.parametrize("args, code, message", [
    (["--layer", "nope"], 1, "matches no tensor"),
    (["--layer", "-9"], 1, "out of range"),
    (["--composite", "nope"], 1, "unknown composite"),
    (["--initial", "nope"], 2, "Invalid value"),
    (["--method", "scorecam"], 2, "Invalid value"),
])
def test_bad_options_write_nothing(capsys, tiny, args, code, message):
    result = cli(capsys, "augment", str(tiny), *args)
    assert result[0] == code and message in result[2]
    assert not tiny.with_name("tiny.rcam.onnx").exists()


def test_broken_and_missing_files(capsys, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    code, _, err = cli(capsys, "augment", str(broken))
    assert code == 1 and "not a readable ONNX model" in err
    code, _, err = cli(capsys, "augment", str(tmp_path / "missing.onnx"))
    assert code == 1 and "no such file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_unsupported_op_exits_4_and_writes_nothing(capsys, tiny, tmp_path):
    model = onnx.load(tiny)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.name = "Sin", "the_sine"
    odd = tmp_path / "odd.onnx"
    onnx.save(model, odd)
    code, _, err = cli(capsys, "augment", str(odd), "--layer", "conv")
    assert code == 4  # not 2, click's usage error
    assert "Sin" in err and "the_sine" in err and "Supported ops:" in err and "Conv" in err
    assert not odd.with_name("odd.rcam.onnx").exists()


def test_layers_lists_candidates(capsys, tiny):
    code, out, _ = cli(capsys, "layers", str(tiny))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["INDEX", "TENSOR", "OP", "SHAPE", "GRID", "DOWN", "SCOPE"]
    assert [line.split()[:3] for line in lines[1:]] == [["-2", "conv", "Conv"], ["-1", "act", "Relu"]]
    assert "[n, 4, 8, 8]" in out and " 8x8 " in out and "1x" in out


def test_bundled_model_is_the_default(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "layers")
    assert code == 0 and "/_blocks.15/Add_output_0" not in out and "_blocks.15._project_conv" in out
    code, out, err = cli(capsys, "augment", "--layer", "auto", "--layer", "_blocks.4")
    assert code == 0, err
    assert (tmp_path / "efficientnet_lite0.rcam.onnx").is_file()
    assert "bundled EfficientNet-Lite0" in out and "rcam/_blocks.4/map" in out


def test_augmenting_twice_is_refused(capsys, tiny):
    assert cli(capsys, "augment", str(tiny))[0] == 0
    once = tiny.with_name("tiny.rcam.onnx")
    code, _, err = cli(capsys, "augment", str(once), "-o", str(tiny.with_name("twice.onnx")))
    assert code == 1 and "augmented before" in err
    assert not tiny.with_name("twice.onnx").exists()


def test_input_shape_fixes_a_dynamic_height_and_width(capsys, tiny, tmp_path):
    dynamic = onnx.load(str(tiny))
    for dim, name in zip(dynamic.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        dim.Clear()
        dim.dim_param = name
    path = tmp_path / "dynamic.onnx"
    onnx.save(dynamic, path)

    code, _, err = cli(capsys, "layers", str(path))
    assert code == 1 and "--input-shape" in err
    code, out, _ = cli(capsys, "layers", str(path), "--input-shape", "N,3,12,12")
    assert code == 0 and "[n, 4, 12, 12]" in out
    code, _, _ = cli(capsys, "augment", str(path), "--input-shape", "Nx3x12x12", "-o", str(tmp_path / "out.onnx"))
    assert code == 0
    out = run_model(str(tmp_path / "out.onnx"), {"x": np.random.rand(2, 3, 12, 12).astype(np.float32)})
    assert out["rcam/auto/map"].shape == (2, 12, 12)

    code, _, err = cli(capsys, "augment", str(path), "--input-shape", "3,,12")
    assert code == 2 and "write it like N,3,224,224" in err


def test_a_model_that_does_not_run_is_not_written(capsys, tiny, monkeypatch):
    """augment runs what it wrote before it reports success. A generated graph that onnx.checker passes but
    onnxruntime cannot run (here the Relu's relevance gathered from channels it does not have: shape inference
    does not check indices) exits 3, quotes onnxruntime and names the node, and writes nothing; --no-verify writes
    it anyway."""
    from onnx_rcam import propagators

    def broken_relu(ctx, node, relevance):
        return [ctx.builder.node("Gather", [relevance[0], ctx.builder.ints([99, 99, 99, 99])], axis=1)]

    monkeypatch.setitem(propagators.PROPAGATORS, "Relu", broken_relu)
    code, out, err = cli(capsys, "augment", str(tiny), "--layer", "conv")
    assert code == 3, err
    assert "does not run in onnxruntime" in err and "Gather(" in err and "Nothing was written" in err
    assert not tiny.with_name("tiny.rcam.onnx").exists()

    code, out, err = cli(capsys, "augment", str(tiny), "--layer", "conv", "--no-verify")
    assert code == 0, err
    assert "not run (--no-verify)" in out and tiny.with_name("tiny.rcam.onnx").is_file()


def test_precision_fp16_keeps_the_outputs_float32(capsys, tiny):
    code, out, err = cli(capsys, "augment", str(tiny), "--precision", "fp16")
    assert code == 0, err
    assert "backward  fp16" in out
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    outputs = run_model(str(tiny.with_name("tiny.rcam.onnx")), {"x": x})
    assert outputs["rcam/auto/map"].dtype == np.float32 and np.all(np.isfinite(outputs["rcam/auto/relevance"]))
    np.testing.assert_array_equal(outputs["probs"], run_model(str(tiny), {"x": x})["probs"])
