"""A static viewer site: the augmented model, its preprocessing, labels and a page that runs them in the browser
with onnxruntime-web (WebAssembly). Any static server serves the folder; nothing leaves the viewer's machine."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import onnx

from .augment import augment
from .errors import RcamError
from .explain import imagenet_labels, model_labels
from .images import Preprocessing, input_bounds, input_layout, sidecar
from .load import load

ASSET_FILES = ("index.html", "app.js")
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", "NOTICE")
SEED_INPUT, TARGET_INPUT = "rcam/seed", "rcam/target"


def assets_folder() -> Path:
    """The viewer's page and the onnxruntime-web files: the installed onnx_rcam.webapp package (the repository's
    web/ folder), or web/ beside the package in a source checkout."""
    try:
        found = Path(str(resources.files("onnx_rcam.webapp")))
        if (found / "index.html").is_file():
            return found
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "web"


def missing_assets(folder: Path | None = None) -> list[str]:
    """The viewer files that are not there (the onnxruntime-web ones come from `npm ci && npm run build` in web/)."""
    folder = folder or assets_folder()
    wanted = [folder / name for name in ASSET_FILES] + [folder / "dist" / name for name in RUNTIME_FILES]
    return [str(path) for path in wanted if not path.is_file()]


def _settings(preprocessing: Preprocessing) -> dict:
    return {"size": list(preprocessing.size), "resize": preprocessing.resize,
            "resize_shorter": preprocessing.resize_shorter, "mean": list(preprocessing.mean),
            "std": list(preprocessing.std), "channels": preprocessing.channels,
            "pixel_range": preprocessing.pixel_range}


def _image_input(proto: onnx.ModelProto) -> onnx.ValueInfoProto:
    initialized = {t.name for t in proto.graph.initializer}
    return next(i for i in proto.graph.input if i.name not in initialized and i.name not in (SEED_INPUT,
                                                                                             TARGET_INPUT))


def write_site(model: str | os.PathLike | onnx.ModelProto, outdir: str | os.PathLike, layers=("auto",),
               preprocess: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
               methods=("rcam",), composite="rcam", input_shape=None, force: bool = False) -> Path:
    """Write the viewer for `model` into `outdir` and return the page's path.

    model: a plain classifier (augmented here with `layers`, `methods`, `composite`, `input_shape`) or one that
    `onnx-rcam augment` wrote (used as it is). preprocess: a preset name or a JSON file; default the model's
    sidecar MODEL.preprocess.json, else `imagenet`. labels: a file with one class name per line; default the names
    the model carries, or ImageNet's for 1000 classes. The folder gets index.html, app.js, ort/ (onnxruntime-web),
    MODEL.rcam.onnx, MODEL.preprocess.json, labels.txt and site.json (which of them the page loads); serve it with
    any static server (e.g. `python -m http.server -d OUTDIR`)."""
    missing = missing_assets()
    if missing:
        raise RcamError(f"the viewer's files are missing ({', '.join(missing)}); in a source checkout run "
                        "`npm ci && npm run build` in web/")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise RcamError(f"{out}: not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RcamError(f"{out}: the folder holds files already (force=True, --force, writes into it)")

    proto = load(model)
    if SEED_INPUT not in {i.name for i in proto.graph.input}:
        proto = augment(proto, layers=layers, methods=methods, composite=composite, input_shape=input_shape,
                        input_bounds=input_bounds(model if not isinstance(model, onnx.ModelProto) else None,
                                                  preprocess))
    outputs = [o.name for o in proto.graph.output]
    if "rcam/class" not in outputs:
        raise RcamError("the viewer explains classifiers; this augmented model explains a detector's or "
                        "segmenter's output (its seed must be fed)")
    image = _image_input(proto)
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in image.type.tensor_type.shape.dim]
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise RcamError(f"the image input {image.name} has shape {shape}: give input_shape (--input-shape)")
    layout = input_layout(shape)
    size = tuple(shape[2:4] if layout == "NCHW" else shape[1:3])

    path = None if isinstance(model, onnx.ModelProto) else Path(model)
    found = sidecar(path) if preprocess is None and path is not None else None
    if found:
        settings = json.loads(found.read_text())
    elif preprocess is not None and Path(preprocess).is_file():
        settings = json.loads(Path(preprocess).read_text())
    else:
        settings = _settings(Preprocessing.preset(str(preprocess or "imagenet"), size, layout))
    checked = out / ".check.json"  # what Preprocessing.from_file accepts, the page accepts
    stem = path.name.removesuffix(".onnx").removesuffix(".rcam") if path is not None else "model"

    classes = _classes(proto)
    if labels is not None:
        names = Path(labels).read_text().splitlines()
    else:
        names = model_labels(proto) or (imagenet_labels() if classes == 1000 else None)
    if names is not None and classes and len(names) < classes:
        raise RcamError(f"{len(names)} labels for a model with {classes} classes")

    out.mkdir(parents=True, exist_ok=True)
    checked.write_text(json.dumps(settings))
    try:
        Preprocessing.from_file(checked, layout)
    finally:
        checked.unlink()
    assets = assets_folder()
    for name in ASSET_FILES:
        shutil.copyfile(assets / name, out / name)
    (out / "ort").mkdir(exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copyfile(assets / "dist" / name, out / "ort" / name)
    model_file, sidecar_file = f"{stem}.rcam.onnx", f"{stem}.preprocess.json"
    onnx.save(proto, str(out / model_file))
    (out / sidecar_file).write_text(json.dumps(settings, indent=2) + "\n")
    site = {"model": model_file, "preprocess": sidecar_file, "input": image.name, "input_shape": shape,
            "layout": layout}
    if names is not None:
        (out / "labels.txt").write_text("\n".join(names) + "\n")
        site["labels"] = "labels.txt"
    (out / "site.json").write_text(json.dumps(site, indent=2) + "\n")
    return out / "index.html"


def _classes(proto: onnx.ModelProto) -> int | None:
    """The number of classes of the first output ([N, K] logits), if its shape says."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if len(dims) == 2 and dims[-1].HasField("dim_value") else None
