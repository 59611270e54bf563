"""Deployed forms of a float32 model, each made by the real tool that users deploy with (never a converter of ours).

- fp16: onnxconverter_common.float16.convert_float_to_float16, with float16 inputs and outputs, or with
  keep_io_types=True (float32 inputs and outputs, Casts at both ends).
- INT8 / INT16 QDQ: onnxruntime.quantization.quantize_static after quant_pre_process (what onnxruntime's
  documentation prescribes), calibrated on the batches given. INT16 with per-channel weights quantizes almost
  losslessly, so it checks the handling of Q/DQ pairs to within a tight tolerance; INT8 is the realistic form.
- QOperator: quantize_static with quant_format=QuantFormat.QOperator (QLinearConv, ...): unsupported, for the error
  tests.
- onnxruntime-optimised: a CPU InferenceSession with graph_optimization_level and optimized_model_filepath. EXTENDED
  holds com.microsoft FusedConv; ALL holds the machine-specific NCHWc layout ops (unsupported, for the error tests).
- onnxslim: onnxslim.slim.

`Forms` makes each (model, form) once into a folder and hands back the file's path.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

CPU = ["CPUExecutionProvider"]

# The forms augment must explain, and the ones it must refuse with a ModelError.
FORMS = ("fp32", "fp16", "fp16_io32", "int8_qdq", "int16_qdq", "ort_extended", "slim")
REFUSED = ("int8_qoperator", "ort_all")


class BatchReader(CalibrationDataReader):
    """Calibration data for quantize_static: the samples, `batch` at a time, under the model's input name."""

    def __init__(self, input_name: str, samples: np.ndarray, batch: int = 4):
        self.feeds = [{input_name: samples[i:i + batch]} for i in range(0, len(samples), batch)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0


def fp16(source: Path, target: Path, keep_io_types: bool = False) -> Path:
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one UserWarning per weight that fp16 rounds to 0 or clips: expected
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(onnx.load(source), keep_io_types=keep_io_types)
    onnx.save(converted, target)
    return target


def quant_preprocessed(source: Path, target: Path) -> Path:
    """onnxruntime's recommended step before quantize_static: symbolic shape inference and basic optimisations."""
    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(source), str(target))
    return target


def quantized(preprocessed: Path, target: Path, calibration: np.ndarray, quant_format=QuantFormat.QDQ,
              activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel: bool = False,
              **options) -> Path:
    """quantize_static calibrated on `calibration`; `options` go to it as they are (calibrate_method, ...)."""
    input_name = onnx.load(preprocessed, load_external_data=False).graph.input[0].name
    quantize_static(str(preprocessed), str(target), BatchReader(input_name, calibration),
                    quant_format=quant_format, activation_type=activation_type, weight_type=weight_type,
                    per_channel=per_channel, calibration_providers=CPU, **options)
    return target


def ort_optimized(source: Path, target: Path, level: ort.GraphOptimizationLevel) -> Path:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=CPU)
    return target


def slim(source: Path, target: Path) -> Path:
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(source)), target)
    return target


def domains(path: Path) -> set[str]:
    return {node.domain or "ai.onnx" for node in onnx.load(path, load_external_data=False).graph.node}


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(path, load_external_data=False).graph.node}


class Forms:
    """Deployed forms of float32 models, made once each into `folder` (a session's cache)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.made: dict[tuple[str, str], Path] = {}

    def get(self, name: str, source: Path, form: str, calibration: np.ndarray | None = None) -> Path:
        """The file of `form` (FORMS or REFUSED) of the float32 model `source`, called `name` in the cache.
        The quantized forms need `calibration`, samples shaped like the model's input."""
        key = (name, form)
        if key not in self.made:
            self.made[key] = self._make(name, Path(source), form, calibration)
        return self.made[key]

    def _make(self, name: str, source: Path, form: str, calibration) -> Path:
        target = self.folder / f"{name}.{form}.onnx"
        if form == "fp32":
            return source
        if form in ("fp16", "fp16_io32"):
            return fp16(source, target, keep_io_types=form == "fp16_io32")
        if form == "ort_extended":
            return ort_optimized(source, target, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        if form == "ort_all":
            return ort_optimized(source, target, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if form == "slim":
            return slim(source, target)
        settings = {"int8_qdq": {},
                    "int16_qdq": dict(activation_type=QuantType.QInt16, weight_type=QuantType.QInt16,
                                      per_channel=True),
                    "int8_qoperator": dict(quant_format=QuantFormat.QOperator)}
        if form not in settings:
            raise ValueError(f"unknown form {form!r}")
        if calibration is None:
            raise ValueError(f"form {form} needs calibration samples")
        return quantized(self._preprocessed(name, source), target, calibration, **settings[form])

    def _preprocessed(self, name: str, source: Path) -> Path:
        key = (name, "quant_preprocessed")
        if key not in self.made:
            self.made[key] = quant_preprocessed(source, self.folder / f"{name}.quant_preprocessed.onnx")
        return self.made[key]


def bundled_reexport(target: Path, exporter: str, opset: int, custom_pad: bool = True) -> Path:
    """The bundled EfficientNet-Lite0 exported again from its torch source (models/build_default_model.py), by
    TorchScript (`torchscript`) or dynamo (`dynamo`) at `opset`. custom_pad=False: TorchScript with torch's own pad
    symbolic, which computes the pads with helper nodes in front of every Pad (the file ships with one Pad node of
    constant pads instead)."""
    import torch

    from onnx_rcam.models import build_default_model as build

    model = build.load_torch_model()
    names = {"input_names": ["input"], "output_names": ["logits"]}
    if exporter == "dynamo":
        program = torch.onnx.export(model, (torch.zeros(2, 3, 224, 224),), dynamo=True, opset_version=opset,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names)
        onnx.save(program.model_proto, target)
        return target
    if exporter != "torchscript":
        raise ValueError(f"unknown exporter {exporter!r}")
    if custom_pad:
        torch.onnx.register_custom_op_symbolic("aten::pad", build.zero_pad_symbolic, opset)
    try:
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), target, dynamo=False, opset_version=opset,
                          do_constant_folding=True, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          **names)
    finally:
        if custom_pad:
            torch.onnx.unregister_custom_op_symbolic("aten::pad", opset)
    return target
