"""Deployed model forms (issue 12; docs/design.md section 6): what the real tools make of a float32 model, explained.

Each model (the bundled EfficientNet-Lite0 on the bundled photos; ResNet18, MobileNetV2, EfficientNet and DenseNet
with random weights on well-conditioned random batches) is turned into every form of deployed.FORMS by the tool
users deploy with, augmented at two depths, run in onnxruntime on CPU with the fp32 model's explained classes fed
through rcam/target, and its maps compared with the fp32 model's:

- fp16 and fp16 with fp32 I/O: every map within 0.03 and the raw maps' correlation per sample >= 0.999 (the
  backward runs in fp32; only the forward's fp16 rounding reaches the maps).
- onnxruntime at ORT_ENABLE_EXTENDED (FusedConv) and onnxslim: the same function, within 1e-4.
- INT16 QDQ with per-channel weights (almost lossless): within 0.01, correlation >= 0.999.
- INT8 QDQ: finite maps in [0, 1]; the correlation is printed, not promised (INT8 changes the model's function).

The original outputs stay bit-identical to the plain deployed model's, but where onnxruntime itself rounds a
deployed form differently once its activations are read (fp16 on the CPU; the INT8 bundled model's fused integer
kernels), which augment reports. Also: `precision="fp16"` against the fp32
backward, an all-zero image, the forms augment must refuse (QOperator, ORT_ENABLE_ALL) through the API and the
CLI, and the bundled model re-exported by both torch exporters at several opsets, every candidate layer against
the bundled file's. The measured numbers are printed after the run (conftest.report).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import families
import onnx_rcam
import reference
import zoo
from conftest import report, run_model
from deployed import FORMS, Forms, bundled_reexport, domains, op_types
from families import FAMILIES
from onnx_rcam.console.cli import run as cli_run
from onnx_rcam.images import Preprocessing, load_image
from onnx_rcam.models_path import models_folder, sample_images

BATCH = 4
MEASURED = "deployed forms: max |map - fp32 map|, least raw-map correlation (form, model, layer)"


def measured(form: str, name: str, layer: str, difference: float, agreement: float) -> None:
    report(MEASURED, f"{form} {name} {layer}", f"{form:24s} {name:13s} {layer:28s} {difference:9.3g}  {agreement:.5f}")

# What each form's maps must satisfy against the fp32 model's: (max map difference, least raw-map correlation).
# None: only finite and in [0, 1] (INT8 changes the function the model computes; its agreement is reported).
TOLERANCES = {"fp16": (0.03, 0.999), "fp16_io32": (0.03, 0.999), "int16_qdq": (0.01, 0.999),
              "ort_extended": (1e-4, None), "slim": (1e-4, None), "int8_qdq": None}


@dataclass(frozen=True)
class Subject:
    source: Path              # the float32 model
    x: np.ndarray             # the batch explained
    targets: np.ndarray       # rcam/target for the fp32 model
    calibration: np.ndarray   # quantize_static's calibration samples
    layers: tuple[str, str]   # two depths


def bundled_subject() -> Subject:
    preprocessing = Preprocessing.from_file(models_folder() / "efficientnet_lite0.preprocess.json")
    pictures = [load_image(path) for path in sample_images()]
    photos = np.stack([preprocessing(picture) for picture in pictures])
    # Only four photos ship: with their mirror images, eight calibration samples.
    mirrored = np.stack([preprocessing(picture.transpose(Image.FLIP_LEFT_RIGHT)) for picture in pictures])
    return Subject(onnx_rcam.default_model_path(), photos, np.full(len(photos), -1, np.int64),
                   np.concatenate([photos, mirrored]), ("auto", "_blocks.4"))


# Random-weight families: (builder, input size, two of the family's layers).
FAMILY_SUBJECTS = {
    "resnet18": (lambda: families.randomize(zoo.resnet18(0.125, num_classes=20), seed=1), 112, ("layer2", "layer4")),
    "mobilenet_v2": (FAMILIES["mobilenet_v2"].build, FAMILIES["mobilenet_v2"].size, ("features.3", "features.9")),
    "efficientnet": (FAMILIES["efficientnet"].build, FAMILIES["efficientnet"].size, ("features.3", "features.5")),
    "densenet": (FAMILIES["densenet"].build, FAMILIES["densenet"].size, ("features.transition1", "features.norm5")),
}
MODELS = ["bundled", *FAMILY_SUBJECTS]


def family_subject(name: str, folder: Path) -> Subject:
    build, size, layers = FAMILY_SUBJECTS[name]
    model = families.randomize(build(), seed=sum(map(ord, name)))
    x, targets, _ = reference.well_conditioned_batch(model, layers, BATCH, size, seed=7)
    source = zoo.export(model, folder / f"{name}.onnx", "torchscript", input_shape=(1, 3, size, size))
    # The calibration set holds the explained batch itself: activations beyond the calibrated range saturate, which
    # is quantization's error, not the explanation's (MobileNetV2's features.3 map moved by 0.039 under INT16 when
    # calibrated on other random samples only, by 1.4e-4 with the batch among them).
    others = torch.randn(12, 3, size, size, generator=torch.Generator().manual_seed(11)).numpy()
    return Subject(source, x, targets, np.concatenate([x, others]), layers)


@dataclass
class Explained:
    path: Path                 # the deployed file
    plain: dict                # its outputs, unaugmented
    augmented: onnx.ModelProto
    outputs: dict              # the augmented model's outputs
    keys: list[str]            # rcam/<key>/... of the subject's two layers, in order
    x: np.ndarray              # the batch as fed (float16 for fp16 inputs)
    drift_noted: bool          # augment warned that onnxruntime computes the original outputs differently


class Cases:
    """Subjects, deployed forms and their explanations, each made once per session."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.forms = Forms(folder / "forms")
        self.subjects: dict[str, Subject] = {}
        self.explained: dict[tuple[str, str], Explained] = {}

    def subject(self, name: str) -> Subject:
        if name not in self.subjects:
            self.subjects[name] = bundled_subject() if name == "bundled" else family_subject(name, self.folder)
        return self.subjects[name]

    def explain(self, name: str, form: str) -> Explained:
        if (name, form) not in self.explained:
            subject = self.subject(name)
            path = self.forms.get(name, subject.source, form, subject.calibration)
            image = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.elem_type
            x = subject.x.astype(np.float16) if image == onnx.TensorProto.FLOAT16 else subject.x
            # The fp32 model explains the subject's targets; every other form the classes the fp32 model explained.
            targets = subject.targets if form == "fp32" else self.explain(name, "fp32").outputs["rcam/class"]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                augmented = onnx_rcam.augment(path, layers=list(subject.layers))
            drift_noted = any("original outputs differ" in str(w.message) for w in caught)
            outputs = run_model(augmented, {"input": x, "rcam/target": targets})
            keys = [output[len("rcam/"):-len("/map")] for output in outputs
                    if output.startswith("rcam/") and output.endswith("/map")]
            self.explained[(name, form)] = Explained(path, run_model(str(path), {"input": x}), augmented, outputs,
                                                     keys, x, drift_noted)
        return self.explained[(name, form)]


@pytest.fixture(scope="session")
def cases(export_dir) -> Cases:
    return Cases(export_dir / "deployed")


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per sample."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


DEPLOYED = [form for form in FORMS if form != "fp32"]


def matrix(forms=DEPLOYED):
    return [pytest.param(name, form, id=f"{name}-{form}") for name in MODELS for form in forms]


def test_forms_are_what_the_tools_make(cases):
    """Each form holds what makes it that form, so that the matrix tests what it says."""
    source = cases.subject("bundled").source
    path = {form: cases.forms.get("bundled", source, form, cases.subject("bundled").calibration)
            for form in DEPLOYED}
    image = {form: onnx.load(p, load_external_data=False).graph.input[0].type.tensor_type.elem_type
             for form, p in path.items()}
    assert image["fp16"] == onnx.TensorProto.FLOAT16 and image["fp16_io32"] == onnx.TensorProto.FLOAT
    assert "Cast" in op_types(path["fp16_io32"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(path["int8_qdq"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(path["int16_qdq"])
    int16 = onnx.load(path["int16_qdq"], load_external_data=False)
    zero_points = {i.name: i.data_type for i in int16.graph.initializer}
    activations = {zero_points[node.input[2]] for node in int16.graph.node if node.op_type == "QuantizeLinear"}
    assert activations == {onnx.TensorProto.INT16}  # (biases are INT32)
    assert "com.microsoft" in domains(path["ort_extended"]) and "FusedConv" in op_types(path["ort_extended"])
    assert "Pad" not in op_types(path["slim"]) and "Pad" in op_types(source)  # slim folds the pads into the convs


@pytest.mark.parametrize("name, form", matrix())
def test_deployed_maps_match_fp32(cases, name, form):
    reference_run = cases.explain(name, "fp32")
    case = cases.explain(name, form)
    out, ref = case.outputs, reference_run.outputs
    np.testing.assert_array_equal(out["rcam/class"], ref["rcam/class"])
    assert len(case.keys) == 2
    for layer, key, ref_key in zip(cases.subject(name).layers, case.keys, reference_run.keys):
        heat, raw = out[f"rcam/{key}/map"], out[f"rcam/{key}/raw"]
        assert heat.dtype == np.float32 and heat.shape == ref[f"rcam/{ref_key}/map"].shape
        assert np.all(np.isfinite(heat)) and np.all(np.isfinite(raw)), f"{layer}: non-finite map"
        assert heat.min() >= 0 and heat.max() <= 1, f"{layer}: map outside [0, 1]"
        difference = float(np.abs(heat - ref[f"rcam/{ref_key}/map"]).max())
        agreement = float(correlation(raw, ref[f"rcam/{ref_key}/raw"]).min())
        measured(form, name, layer, difference, agreement)
        if TOLERANCES[form] is None:
            continue
        tolerance, least_correlation = TOLERANCES[form]
        assert difference <= tolerance, f"{layer}: map differs by {difference:.3g} from fp32's (> {tolerance})"
        if least_correlation is not None:
            assert agreement >= least_correlation, f"{layer}: raw map correlation {agreement:.5f}"


@pytest.mark.parametrize("name, form", matrix(FORMS))
def test_original_outputs_unchanged(cases, name, form):
    case = cases.explain(name, form)
    first = next(iter(case.plain))
    original, plain = case.outputs[first], case.plain[first]
    assert original.dtype == plain.dtype and original.shape == plain.shape
    # The augmented graph holds the original graph unchanged: every node, initializer, input and output.
    plain_model = onnx.load(case.path)
    added = {node.SerializeToString() for node in case.augmented.graph.node}
    assert all(node.SerializeToString() in added for node in plain_model.graph.node)
    initializers = {i.name: i for i in case.augmented.graph.initializer}
    assert all(initializers[i.name] == i for i in plain_model.graph.initializer)
    assert all(o in case.augmented.graph.output for o in plain_model.graph.output)
    assert all(i in case.augmented.graph.input for i in plain_model.graph.input)
    deviation = float(np.abs(original.astype(np.float64) - plain).max())
    if deviation:
        report("deployed forms: original output vs the plain model's", f"{name}-{form}",
               f"{name}-{form}: {deviation:.3g}")
    if form.startswith("fp16"):
        # onnxruntime's CPU provider computes several fp16 ops in fp32 behind Casts it inserts, and drops the
        # Cast pairs between two of them unless the fp16 tensor in between is read elsewhere: reading a tensor
        # (making it a graph output will do, without onnx-rcam) rounds it to fp16 and moves the logits by an fp16
        # ulp or two. No augmentation can read a tensor without reading it, so fp16 models on CPU get the plain
        # model's outputs to within 2 ulps of the largest output (the graph itself is unchanged, checked above).
        ulp = float(np.spacing(np.float16(np.abs(plain).max())))
        assert deviation <= 2 * ulp, f"original output moved by {deviation:.3g} (fp16 ulp {ulp:.3g})"
    elif form == "int8_qdq" and name == "bundled":
        # onnxruntime fuses a DequantizeLinear -> op -> QuantizeLinear unit into an integer kernel only where nothing
        # else reads its tensors (reading one of them, a DequantizeLinear's output or a QuantizeLinear's, without
        # onnx-rcam, moves the bundled model's logits by 0.12, as much as onnxruntime's BASIC level moves them from
        # ALL's). The explanation reads them, so augment must say that the outputs move.
        assert deviation == 0 or case.drift_noted, f"original output moved by {deviation:.3g} without a note"
    else:
        assert deviation == 0, f"original output moved by {deviation:.3g}"


# -- precision="fp16" on the fp32 bundled model --------------------------------------------------------------------

LAYERS_FP16 = ["auto", "_blocks.10", "_blocks.4"]


@pytest.fixture(scope="module")
def precisions():
    """The bundled model augmented with the fp32 and the fp16 backward."""
    return {precision: onnx_rcam.augment(onnx_rcam.default_model_path(), layers=LAYERS_FP16, precision=precision)
            for precision in ("fp32", "fp16")}


def test_fp16_backward_agrees_with_fp32(cases, precisions):
    photos = cases.subject("bundled").x
    exact, rounded = (run_model(precisions[p], {"input": photos}) for p in ("fp32", "fp16"))
    assert np.array_equal(exact["logits"], rounded["logits"])
    np.testing.assert_array_equal(rounded["rcam/class"], exact["rcam/class"])
    keys = [output[len("rcam/"):-len("/map")] for output in exact if output.endswith("/map")]
    for layer, key in zip(LAYERS_FP16, keys):
        heat = rounded[f"rcam/{key}/map"]
        assert heat.dtype == np.float32 and np.all(np.isfinite(heat)) and 0 <= heat.min() and heat.max() <= 1
        difference = float(np.abs(heat - exact[f"rcam/{key}/map"]).max())
        agreement = float(correlation(rounded[f"rcam/{key}/raw"], exact[f"rcam/{key}/raw"]).min())
        measured("precision=fp16", "bundled", layer, difference, agreement)
        # Measured: up to 0.026 and correlation >= 0.9977 (at _blocks.4); bounds with room, that still catch a
        # broken fp16 backward.
        assert difference <= 0.05 and agreement >= 0.99, f"{layer}: {difference:.3g}, correlation {agreement:.5f}"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_all_zero_image_gives_finite_outputs(precisions, precision):
    outputs = run_model(precisions[precision], {"input": np.zeros((2, 3, 224, 224), np.float32)})
    for name, value in outputs.items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), f"{name}: non-finite"
        if name.endswith("/map"):
            assert value.min() >= 0 and value.max() <= 1, name


# -- forms augment must refuse --------------------------------------------------------------------------------------

REFUSALS = {
    # form: (what the message must name: the op, and what to give instead)
    "int8_qoperator": (r"QLinearConv", r"QuantFormat\.QDQ"),
    "ort_all": (r"com\.microsoft\.nchwc:\w+", r"ORT_ENABLE_EXTENDED"),
}


@pytest.fixture(scope="module")
def refused(cases):
    subject = cases.subject("bundled")
    made = {form: cases.forms.get("bundled", subject.source, form, subject.calibration) for form in REFUSALS}
    if "com.microsoft.nchwc" not in domains(made["ort_all"]):
        pytest.skip("onnxruntime made no NCHWc layout ops on this CPU at ORT_ENABLE_ALL")
    return made


@pytest.mark.parametrize("form", list(REFUSALS))
def test_refused_forms_raise_model_error(refused, form):
    with pytest.raises(onnx_rcam.ModelError) as error:
        onnx_rcam.augment(refused[form], layers=["auto"])
    for pattern in REFUSALS[form]:
        assert re.search(pattern, str(error.value)), f"{pattern!r} not in: {error.value}"


@pytest.mark.parametrize("form", list(REFUSALS))
def test_cli_refuses_and_writes_nothing(refused, form, tmp_path, capsys):
    written = tmp_path / "out.onnx"
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["augment", str(refused[form]), "-o", str(written)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert not written.exists() and list(tmp_path.iterdir()) == []
    assert re.search(REFUSALS[form][0], err) and "Traceback" not in err


# -- the bundled model re-exported: every candidate layer against the bundled file's --------------------------------

REEXPORTS = [("torchscript", 13, True), ("torchscript", 17, True), ("torchscript", 20, True),
             ("torchscript", 13, False),  # torch's own pad symbolic: once emitted ReduceSum with empty axes
             ("dynamo", 18, True), ("dynamo", 20, True)]


def block(scope: str) -> str:
    """`_blocks.4` of `_blocks.4._project_conv` (the exporters name a folded Conv after its conv or its bn)."""
    match = re.match(r"_blocks\.\d+", scope)
    return match.group(0) if match else ""


@pytest.fixture(scope="module")
def bundled_layers(cases):
    """Every candidate layer of the bundled file and its maps on the photos (one augment, one run)."""
    source = cases.subject("bundled").source
    layers = onnx_rcam.candidate_layers(source)
    outputs = run_model(onnx_rcam.augment(source, layers=[c.tensor for c in layers]),
                        {"input": cases.subject("bundled").x})
    return layers, outputs


@pytest.mark.parametrize("exporter, opset, custom_pad", REEXPORTS,
                         ids=[f"{e}-op{o}{'' if c else '-stock_pad'}" for e, o, c in REEXPORTS])
def test_reexported_bundled_model_explains_every_layer_alike(cases, bundled_layers, exporter, opset, custom_pad,
                                                             export_dir):
    path = bundled_reexport(export_dir / f"bundled-{exporter}-op{opset}{'' if custom_pad else '-stock'}.onnx",
                            exporter, opset, custom_pad)
    expected_layers, expected = bundled_layers
    layers = onnx_rcam.candidate_layers(path)
    # Tensor names differ between exports: the layers match by position, op, shape and block.
    assert [(c.op, c.shape[1:]) for c in layers] == [(c.op, c.shape[1:]) for c in expected_layers]
    assert all(block(c.scope) == block(e.scope) for c, e in zip(layers, expected_layers) if c.scope)
    outputs = run_model(onnx_rcam.augment(path, layers=[c.tensor for c in layers]),
                        {"input": cases.subject("bundled").x})
    np.testing.assert_array_equal(outputs["rcam/class"], expected["rcam/class"])
    worst = 0.0
    for layer, reference_layer in zip(layers, expected_layers):
        heat, ref = outputs[f"rcam/{layer.tensor}/map"], expected[f"rcam/{reference_layer.tensor}/map"]
        assert np.all(np.isfinite(heat)), f"{reference_layer.tensor}: non-finite map"
        difference = float(np.abs(heat - ref).max())
        assert difference <= 1e-3, f"layer {layer.index} ({reference_layer.tensor}): map differs by {difference:.3g}"
        worst = max(worst, difference)
    measured(f"{exporter} opset {opset}{'' if custom_pad else ' stock pad'}", "bundled", f"all {len(layers)} layers",
             worst, float("nan"))

