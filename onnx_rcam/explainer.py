"""The Python API for pictures: `Explainer(model)(images)` returns an `Explanation` with maps in [0, 1].

    explainer = Explainer("model.onnx", layers=["layer4"])
    explanation = explainer(["cat.jpg", "dog.png"])
    explanation.maps["layer4"]          # (2, 224, 224) in [0, 1]
    overlay(picture, explanation.maps["layer4"][0])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from .augment import augment
from .errors import RcamError
from .export import recorded_scopes
from .heads import FUSED_KEY, resolve_methods
from .images import Preprocessing, input_bounds, input_layout, load_image, sidecar
from .detection import Detections, detect, detection_seeds, output_layout
from .initial import CLASS_OUTPUT, SEED_INPUT, TARGET_INPUT
from .load import load
from .segmentation import class_regions, segment_classes, segment_seeds

DEVICES = ("auto", "cpu", "cuda")
TASKS = ("classify", "detect", "segment")


def held_methods(model) -> tuple[str, ...]:
    """The methods whose maps an augmented model holds, in output order; () for a plain model."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    if not {TARGET_INPUT, SEED_INPUT} & {i.name for i in proto.graph.input}:
        return ()
    return tuple(dict.fromkeys(o.name.split("/")[0] for o in proto.graph.output if o.name.endswith("/map")))


# The map explain and demo draw unless told: lrp, the relevance summed over channels, for every task. For classes,
# no other map beats it significantly in the most cells of reports/faithfulness.md (62 of 72: three trained
# EfficientNet-Lites at four depths, 42 photos, paired bootstrap intervals; README, Which map by default); for a
# detection or a class region, rcam weighs whole channels by their total relevance, so its map shows everything
# those channels respond to, not the one object the seed picks (measured on real detectors: README, Detectors and
# segmenters). rcam remains the paper's Relevance-CAM, with --method rcam.
DEFAULT_METHOD = "lrp"


@dataclass
class Explanation:
    logits: np.ndarray                    # (N, classes); a detector's or segmenter's raw output (N, ...)
    classes: np.ndarray                   # (N,) the explained class, or (N, top_k); -1: nothing explained there
    maps: dict[str, np.ndarray]           # layer -> (N, H, W) in [0, 1], or (N, top_k, H, W)
    raw: dict[str, np.ndarray] = field(default_factory=dict)          # filled when asked for extras
    relevance: dict[str, np.ndarray] = field(default_factory=dict)   # the gradient, for the Grad-CAM family
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    detections: list[Detections] | None = None  # task detect: per image, the explained detections, best first
    regions: np.ndarray | None = None   # task segment: (N, top_k, h, w) the pixels explained, at the output's size
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every output of the run, where asked for

    @property
    def scores(self) -> np.ndarray:
        """Softmax of the logits."""
        shifted = np.exp(self.logits - self.logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


class Explainer:
    """Runs an augmented model: `model` may be plain (augmented here, in memory) or already augmented.

    method: the CAM whose maps it returns (rcam, a relevance map such as lrp, or one of the Grad-CAM family; see
    heads.METHODS; default: DEFAULT_METHOD, lrp, the relevance summed over channels). also:
    more methods for the augmented model to compute in the same run, read through `run` (onnx-rcam evaluate). relu:
    clip rcam's raw map at 0 before normalising, as the Grad-CAM family does. precision, verify, fuse: as for
    augment(); the fused map is then maps["fused"] (and outputs' METHOD/fused/map), not one of `layers`.
    threads: onnxruntime's threads for one run [default: one per core]; onnx_rcam.distributed gives each worker
    its share of the machine's cores.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, layers=("auto",), device: str = "auto",
                 top_k: int = 1, composite="rcam", initial: str = "contrastive",
                 preprocessing: Preprocessing | str | None = None, input_shape=None, method: str | None = None,
                 also=(), relu: bool = False, precision: str = "fp32", verify: bool = True, task: str = "classify",
                 scores: str | None = None, detections: int = 5, conf: float = 0.25, iou: float = 0.45,
                 layout: str = "auto", fuse: bool = False, threads: int | None = None):
        if device not in DEVICES:
            raise RcamError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        if task not in TASKS:
            raise RcamError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        proto = load(model)
        held = held_methods(proto)  # an already augmented model brings its own methods
        method = method or (DEFAULT_METHOD if not held or DEFAULT_METHOD in held
                            else "rcam" if "rcam" in held else held[0])
        self.method, self.task = resolve_methods([method])[0], task
        if task != "classify" and scores is None:
            scores = proto.graph.output[0].name
        if SEED_INPUT not in {i.name for i in proto.graph.input}:
            proto = augment(proto, layers=layers, composite=composite, initial=initial,
                            top_k=detections if task == "detect" else top_k, input_shape=input_shape,
                            methods=[method, *also], relu=relu, input_bounds=input_bounds(model, preprocessing),
                            precision=precision, verify=verify, scores=None if task == "classify" else scores,
                            fuse=fuse)
        self.model = proto
        self.scopes = recorded_scopes(proto)  # layer key -> torch module path, for titles
        self.session, self.provider, self.cuda_wanted = _session(proto, device, threads)
        self.input = next(i for i in self.session.get_inputs() if i.name not in (TARGET_INPUT, SEED_INPUT))
        outputs = [o.name for o in self.session.get_outputs()]
        keys = [name[len(f"{method}/"):-len("/map")] for name in outputs
                if name.startswith(f"{method}/") and name.endswith("/map")]
        self.layers = [key for key in keys if key != FUSED_KEY]
        self.fused = FUSED_KEY in keys  # whether the model holds maps fused over the layers (augment's fuse)
        if not self.layers:
            held = sorted({name.split("/")[0] for name in outputs if name.endswith("/map")})
            raise RcamError(f"the augmented model has no {method} maps; it holds {', '.join(held) or 'none'}")
        if task == "classify":
            if CLASS_OUTPUT not in outputs:
                raise RcamError("this augmented model explains a detector's or segmenter's output: give task="
                                "'detect' or 'segment' (--task)")
            class_output = self.session.get_outputs()[outputs.index(CLASS_OUTPUT)]
            self.top_k = class_output.shape[1] if len(class_output.shape) == 2 else 1
        else:
            self.scores = scores if scores in outputs else outputs[0]
            self.seed_shape = list(next(i for i in self.session.get_inputs() if i.name == SEED_INPUT).shape)
            score_shape = self.session.get_outputs()[outputs.index(self.scores)].shape
            self.top_k = self.seed_shape[1] if len(self.seed_shape) == len(score_shape) + 1 else 1
            self.score_shape = self.seed_shape[-(len(score_shape) - 1):]
            self.conf, self.iou = conf, iou
            self.layout = output_layout([None, *self.score_shape], layout) if task == "detect" else None
            self.channels_last = task == "segment" and _channels_last(self.score_shape, self.input.shape)
        self.preprocessing = self._preprocessing(model, preprocessing)

    @property
    def name(self) -> str:
        """The method whose maps this explainer returns."""
        return self.method.name

    def title(self, layer: str) -> str:
        """The method and the layer, with its module path where that says more (`auto` -> the module it chose)."""
        if layer == FUSED_KEY:
            return f"{self.name} fused ({', '.join(self.layers)})"
        scope = self.scopes.get(layer, "")
        return f"{self.name} {layer}" + (f" ({scope})" if scope and scope != layer else "")

    @property
    def provider_note(self) -> str:
        """The provider that ran, and why, where that is not what was asked for."""
        if self.cuda_wanted and self.provider != "CUDAExecutionProvider":
            return f"{self.provider} (CUDA could not start: no GPU, or its libraries are missing)"
        return self.provider

    def _preprocessing(self, model, preprocessing) -> Preprocessing:
        """Given (a Preprocessing, a preset name or a JSON file); else the model's sidecar MODEL.preprocess.json (the
        bundled model has one); else `imagenet`."""
        if isinstance(preprocessing, Preprocessing):
            return preprocessing
        layout = input_layout(self.input.shape)
        size = tuple(self.input.shape[2:4] if layout == "NCHW" else self.input.shape[1:3])
        # A preset name, a JSON file (read with the model's layout), or none: the model's sidecar.
        found = sidecar(model) if preprocessing is None else (Path(preprocessing) if Path(preprocessing).is_file()
                                                               else None)
        if found:
            return Preprocessing.from_file(found, layout)
        return Preprocessing.preset(preprocessing or "imagenet", size, layout)

    def prepare(self, images) -> np.ndarray:
        """Model input for images given as paths, PIL images, HxWx3 pictures, or an already prepared batch."""
        dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32  # an fp16 model's input
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return images.astype(dtype)
        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray)
                                                                     and images.ndim == 3):
            images = [images]
        return np.stack([self.preprocessing(_picture(image)) for image in images]).astype(dtype)

    def run(self, images, targets=None, seeds=None) -> dict[str, np.ndarray]:
        """Every output of the augmented model, by name, for a batch (seeds: rcam/seed, for detect and segment)."""
        feeds = {self.input.name: self.prepare(images)}
        if targets is not None:
            feeds[TARGET_INPUT] = np.asarray(targets, dtype=np.int64)
        if seeds is not None:
            feeds[SEED_INPUT] = np.asarray(seeds, dtype=np.float32)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, run_batched(self.session, feeds)))

    def _scores(self, batch: np.ndarray) -> np.ndarray:
        """The explained output alone: onnxruntime runs only the nodes it needs, so the seed's value is unread."""
        seeds = np.zeros([len(batch), *([self.top_k] if self.top_k > 1 else []), *self.score_shape], np.float32)
        return run_batched(self.session, {self.input.name: batch, SEED_INPUT: seeds}, [self.scores])[0]

    def __call__(self, images, targets=None, extras: bool = False, regions=None,
                 outputs: bool = False) -> Explanation:
        """Explain a batch. Classify: targets is the class per image ([N], or [N, top_k]); default: the
        prediction(s). Detect: the best `detections` detections of each image (after NMS), one map each.
        Segment: targets is the class per image ([N] or [N, top_k]; default: the most frequent predicted classes);
        the seed is each class's logits over its region, by default the pixels predicted as it, or `regions`
        ([N, H, W] booleans at input resolution, e.g. a user's box or mask). outputs: keep every output of the
        run in explanation.outputs."""
        if self.task == "classify":
            out = self.run(images, targets)
            explanation = Explanation(out[self.session.get_outputs()[0].name], out[CLASS_OUTPUT], {})
        else:
            batch = self.prepare(images)
            scores = self._scores(batch)
            if self.task == "detect":
                found = detect(scores, self.layout, self.conf, self.iou, self.top_k)
                seeds = detection_seeds(found, scores.shape[1:], self.layout, self.top_k)
                classes = np.full((len(batch), self.top_k), -1, dtype=np.int64)
                for n, detections in enumerate(found):
                    classes[n, :len(detections)] = detections.classes
                explanation = Explanation(scores, classes, {}, detections=found)
            else:
                logits = scores.transpose(0, 3, 1, 2) if self.channels_last else scores  # [N, C, h, w]
                classes = segment_classes(logits, self.top_k, targets)
                masks = class_regions(logits, classes, regions)
                seeds = segment_seeds(logits, classes, masks)
                if self.channels_last:
                    seeds = seeds.transpose(0, 1, 3, 4, 2)
                explanation = Explanation(scores, classes if self.top_k > 1 else classes[:, 0], {}, regions=masks)
            out = self.run(batch, seeds=seeds if self.top_k > 1 else seeds[:, 0])

        def part(name: str) -> dict[str, np.ndarray]:
            return {layer: out[f"{self.method.name}/{layer}/{name}"] for layer in self.layers}

        if self.task == "detect" and self.top_k == 1:  # one detection per image: still a detection axis
            out = {name: value[:, None] if name.endswith(("/map", "/raw", "/relevance", "/gradient")) else value
                   for name, value in out.items()}
        explanation.maps = part("map")
        if self.fused:
            explanation.maps[FUSED_KEY] = out[f"{self.method.name}/{FUSED_KEY}/map"]
        if outputs:  # the other methods' maps too (`also`), for onnx-rcam evaluate
            explanation.outputs = out
        if extras:
            explanation.raw, explanation.relevance, explanation.activations = \
                part("raw"), part(self.method.signal), part("activation")
        return explanation


def _channels_last(score_shape, input_shape) -> bool:
    """Whether a segmenter's scores (without the batch) are [h, w, C] rather than [C, h, w]: their spatial axes are
    the ones downsampled from the input's height and width by one factor (TensorFlow models, MTCNN's P-Net)."""
    size = input_shape[2:4] if input_layout(input_shape) == "NCHW" else input_shape[1:3]

    def on_grid(h, w):
        return all(isinstance(d, int) and d > 0 for d in (h, w, *size)) and \
            abs(size[0] / h - size[1] / w) <= 0.5 * min(size[0] / h, size[1] / w)

    return len(score_shape) == 3 and on_grid(*score_shape[:2]) and not on_grid(*score_shape[1:])


def run_batched(session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs=None) -> list[np.ndarray]:
    """session.run, for a model whose batch is a fixed number (many deployed files fix it at 1): the feeds go in
    chunks of that size, the last one padded with copies of its last row, and the outputs are joined, the padding
    dropped. Every feed and output has the batch on axis 0."""
    fixed = session.get_inputs()[0].shape[0]
    count = len(next(iter(feeds.values())))
    if not isinstance(fixed, int) or count == fixed:
        return session.run(outputs, feeds)
    parts = []
    for start in range(0, count, fixed):
        chunk = {name: value[start:start + fixed] for name, value in feeds.items()}
        short = fixed - len(next(iter(chunk.values())))
        if short:
            chunk = {name: np.concatenate([value, np.repeat(value[-1:], short, axis=0)])
                     for name, value in chunk.items()}
        parts.append([result[:fixed - short] for result in session.run(outputs, chunk)])
    return [np.concatenate(results) for results in zip(*parts)]


def _picture(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return load_image(image)


def _session(model: onnx.ModelProto, device: str, threads: int | None = None) -> tuple[ort.InferenceSession, str,
                                                                                       bool]:
    """The session, the provider that really runs it (onnxruntime falls back to the CPU silently), and whether
    CUDA was tried. threads: intra-op threads (default: onnxruntime's, one per core)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the optional rcam/target input is reported as a warning on every load
    wants_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers())
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RcamError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]
    if wants_cuda:
        ort.set_default_logger_severity(4)  # a missing CUDA library is reported by `provider`, not as a log dump
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)
    provider = session.get_providers()[0]
    if device == "cuda" and provider != "CUDAExecutionProvider":
        raise RcamError("--device cuda: onnxruntime could not start its CUDA provider (no GPU, or CUDA 13 / "
                        "cuDNN 9 libraries missing)")
    return session, provider, wants_cuda
