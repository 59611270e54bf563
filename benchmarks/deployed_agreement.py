"""How far the maps of deployed forms of the bundled model are from the fp32 model's maps.

    python benchmarks/deployed_agreement.py      # writes benchmarks/deployed_agreement.{json,md}; about 3 minutes

Each form is made by the tool people use: onnxconverter-common (fp16, and fp16 keeping fp32 inputs and outputs),
onnxruntime.quantization (QDQ: INT8 per tensor and per channel, UINT8, and INT16 per channel, which quantizes almost
losslessly and so isolates what our handling of Q/DQ costs), onnxruntime's optimizer saved at ORT_ENABLE_EXTENDED,
and onnxslim. INT8 calibration: MinMax over 16 random crops, flips and scalings of the bundled photos; the maps are
compared on the centre crops of the bundled photos and their mirror images, every form explaining the class the
fp32 model predicts (rcam/target). Per form, backward precision and layer: the largest absolute difference of the
maps (in [0, 1]) and the least and mean Pearson correlation of the raw maps over the photos.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

import onnx_rcam
from onnx_rcam.images import Preprocessing, load_image
from onnx_rcam.models_path import sample_images

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import deployed  # noqa: E402 - the deployed-forms tests' makers: the real tools, called the same way
LAYERS = ["auto", "_blocks.10", "_blocks.4", "_blocks.2"]
MODEL = onnx_rcam.default_model_path()
PREPROCESSING = Preprocessing.from_file(MODEL.with_name("efficientnet_lite0.preprocess.json"))


def photos() -> np.ndarray:
    pictures = [load_image(p) for p in sample_images()]
    pictures += [p.transpose(Image.FLIP_LEFT_RIGHT) for p in pictures]
    return np.stack([PREPROCESSING(p) for p in pictures])


def calibration_batches() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sources = [load_image(p) for p in sample_images()]
    batches = []
    for i in range(16):
        picture = sources[i % len(sources)]
        w, h = picture.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = picture.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        batches.append(PREPROCESSING(crop)[None])
    return batches


def make_forms(folder: Path) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantType

    forms = {"fp32": MODEL,
             "fp16": deployed.fp16(MODEL, folder / "fp16.onnx"),
             "fp16, fp32 I/O": deployed.fp16(MODEL, folder / "fp16_io32.onnx", keep_io_types=True)}
    prepared = deployed.quant_preprocessed(MODEL, folder / "prepared.onnx")
    calibration = np.concatenate(calibration_batches())
    for name, options in (("INT8 QDQ per tensor", {}), ("INT8 QDQ per channel", {"per_channel": True}),
                          ("INT8 QDQ per channel, percentile calibration",
                           {"per_channel": True, "calibrate_method": CalibrationMethod.Percentile}),
                          ("UINT8 QDQ", {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QUInt8}),
                          ("INT16 QDQ per channel", {"activation_type": QuantType.QInt16,
                                                     "weight_type": QuantType.QInt16, "per_channel": True})):
        target = folder / f"{name.replace(' ', '_').replace(',', '')}.onnx"
        forms[name] = deployed.quantized(prepared, target, calibration, **options)
    forms["ORT_ENABLE_EXTENDED"] = deployed.ort_optimized(MODEL, folder / "extended.onnx",
                                                          ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    forms["onnxslim"] = deployed.slim(MODEL, folder / "slim.onnx")
    return forms


def explain(path: Path, batch: np.ndarray, precision: str, targets=None) -> dict[str, np.ndarray]:
    augmented = onnx_rcam.augment(path, layers=LAYERS, precision=precision)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0]
    feeds = {image.name: batch.astype(np.float16 if image.type == "tensor(float16)" else np.float32)}
    if targets is not None:
        feeds["rcam/target"] = targets
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    result = {"class": out["rcam/class"], "logits": out[session.get_outputs()[0].name]}
    for layer in LAYERS:
        result[layer] = (out[f"rcam/{layer}/map"], out[f"rcam/{layer}/raw"])
    return result


def compare(ours, reference) -> dict:
    rows = {}
    for layer in LAYERS:
        (maps, raw), (ref_maps, ref_raw) = ours[layer], reference[layer]
        correlations = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(raw, ref_raw)]
        rows[layer] = {"max_map_difference": float(np.abs(maps - ref_maps).max()),
                       "min_raw_correlation": min(correlations), "mean_raw_correlation": float(np.mean(correlations)),
                       "finite": bool(np.all(np.isfinite(maps)) and np.all(np.isfinite(raw)))}
    return rows


def main() -> None:
    started = time.perf_counter()
    batch = photos()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        forms = make_forms(Path(scratch))
        reference = explain(MODEL, batch, "fp32")
        for form, path in forms.items():
            for precision in ("fp32", "fp16"):
                if precision == "fp16" and not (form.startswith("fp") or form == "fp32"):
                    continue
                ours = explain(path, batch, precision, reference["class"])
                agreement = float(np.mean(np.argmax(ours["logits"], 1) == reference["class"]))
                results.append({"form": form, "precision": precision, "top1_agreement": agreement,
                                "layers": compare(ours, reference)})
                print(form, precision, {k: round(v["mean_raw_correlation"], 4) for k, v in
                                        results[-1]["layers"].items()}, flush=True)
    (HERE / "deployed_agreement.json").write_text(json.dumps(results, indent=1))
    lines = ["# Maps of deployed forms against the fp32 model's", "",
             f"`python benchmarks/deployed_agreement.py` on the bundled EfficientNet-Lite0, the 4 bundled photos and "
             f"their mirror images ({len(batch)} images), onnxruntime {ort.__version__}, CPU; "
             f"{time.perf_counter() - started:.0f} s. Each cell: largest |map - fp32 map| / least raw-map correlation "
             f"(mean). `backward` is augment's `precision`. Top-1: share of the photos on which the form predicts "
             f"the fp32 model's class (every form explains that class).", "",
             "| form | backward | top-1 | " + " | ".join(LAYERS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in LAYERS) + " |"]
    for row in results:
        cells = [f"{c['max_map_difference']:.4f} / {c['min_raw_correlation']:.4f} ({c['mean_raw_correlation']:.4f})"
                 + ("" if c["finite"] else " NON-FINITE") for c in row["layers"].values()]
        lines.append(f"| {row['form']} | {row['precision']} | {row['top1_agreement']:.0%} | " + " | ".join(cells)
                     + " |")
    (HERE / "deployed_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
