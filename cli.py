"""The onnx-rcam command line: thin click commands over the Python API (installed as onnx_rcam.console.cli)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click
from onnx import TensorProto

from onnx_rcam import RcamError, default_model_path
from onnx_rcam.augment import build, candidate_layers
from onnx_rcam.boxes import read_boxes
from onnx_rcam.builder import PRECISIONS
from onnx_rcam.evaluate import CONTROLS, evaluate as run_evaluation, evaluate_detections, pyplot, write_results
from onnx_rcam.explain import check_output, explain_images
from onnx_rcam.detection import LAYOUTS
from onnx_rcam.explainer import DEFAULT_METHOD, TASKS, Explainer, held_methods
from onnx_rcam.heads import METHODS
from onnx_rcam.images import IMAGE_SUFFIXES, find_images, input_bounds, load_image
from onnx_rcam.export import drift_note, save
from onnx_rcam.initial import INITIAL_KINDS, SEED_INPUT, TARGET_INPUT
from onnx_rcam.load import parse_shape
from onnx_rcam.scorecam import ScoreCamExplainer
from onnx_rcam.segmentation import box_region, mask_region
from onnx_rcam.web import write_site
from onnx_rcam.rules import COMPOSITES

MODEL_HELP = "ONNX image classifier. Omit it to use the bundled ImageNet EfficientNet-Lite0."


def _model_argument(model: str | None) -> Path:
    return Path(model) if model else default_model_path()


def _model_and_data(model: str | None, inputs) -> tuple[str | None, tuple]:
    """[MODEL] DATA...: a first argument that is an image or a folder, not a model, is data for the bundled model."""
    if model is not None and (Path(model).is_dir() or Path(model).suffix.lower() in IMAGE_SUFFIXES):
        return None, (model, *inputs)
    return model, tuple(inputs)


def _parse_shape(ctx, param, value):
    try:
        return parse_shape(value) if value else None
    except RcamError as exc:
        raise click.BadParameter(str(exc)) from None


input_shape_option = click.option(
    "--input-shape", "input_shape", callback=_parse_shape, metavar="N,C,H,W",
    help="Fix the image input's shape, for models with a dynamic height and width, e.g. N,3,224,224 (a name keeps "
         "that dimension dynamic). The augmented model then takes this shape only.")

# The relevance methods' rules and initial relevance: augment, explain and evaluate take them alike.
composite_option = click.option(
    "--composite", default="rcam", show_default=True, metavar="NAME|FILE",
    help=f"LRP rules per op for the relevance methods: {', '.join(COMPOSITES)}, or a JSON file mapping op types "
         "(and `input`, the first Conv; `depthwise`, Convs with one group per channel) to rules.")
fuse_option = click.option(
    "--fuse", is_flag=True, help="Also fuse each method's maps over the layers (two or more): METHOD/fused/map, the "
                                 "min-max normalisation of the mean of the layers' maps (layer key `fused`).")
initial_option = click.option(
    "--initial", type=click.Choice(INITIAL_KINDS), default="contrastive", show_default=True,
    help="Relevance at the logits for the relevance methods: contrastive (target 1, others -1/K), onehot, or logit.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx-rcam")
def main():
    """Relevance-CAM inside your ONNX model: one onnxruntime run returns the prediction and the explanation maps.

    \b
    onnx-rcam layers MODEL            list the layers you can explain
    onnx-rcam augment MODEL           write MODEL.rcam.onnx with the explanation outputs
    onnx-rcam explain MODEL PHOTOS    overlays, maps and a summary for photos and folders
    onnx-rcam evaluate MODEL PHOTOS   faithfulness and localisation of each method at each layer
    onnx-rcam web MODEL -o site/      a static page that explains photos in the browser
    onnx-rcam demo                    the bundled model explains the bundled photos
    Detectors and segmenters: explain/evaluate --task detect|segment, augment --scores OUTPUT.
    """


precision_option = click.option(
    "--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
    help="Float type of the generated backward pass, whatever the model's own (fp16 and INT8 models are explained "
         "in fp32 by default). fp16 runs faster on GPUs and is less exact: see the README, 'Deployed models'.")
verify_option = click.option(
    "--verify/--no-verify", default=True, show_default=True,
    help="Run the augmented model once in onnxruntime (CPU) on a synthetic batch before writing it; a model that "
         "fails is not written (exit status 3). --no-verify skips the run, for models too big to run here.")


def _ray_address(ctx, param, value):
    """--ray alone: a local cluster (None); else an address Ray takes. A folder or file there is an input that
    --ray took for its value."""
    if value is None or value == LOCAL_CLUSTER:
        return value
    if value == "auto" or "://" in value or (":" in value and value.rsplit(":", 1)[1].isdigit()):
        return value
    raise click.BadParameter(f"{value!r} is not a Ray address (auto, ray://HOST:10001 or HOST:6379): put --ray "
                             "after the inputs, or write --ray=ADDRESS")


LOCAL_CLUSTER = "local"
ray_option = click.option(
    "--ray", "ray_address", is_flag=False, flag_value=LOCAL_CLUSTER, default=None, callback=_ray_address,
    metavar="[ADDRESS]",
    help="Run on Ray (pip install \"onnx-rcam[ray]\"): alone, a local cluster on this machine's cores; `auto`, the "
         "cluster this machine belongs to; ray://HOST:10001, a remote one. INPUT may then be s3://, gs:// or "
         "hdfs:// URIs. Put it last, or write --ray=ADDRESS.")
workers_option = click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                              help="--ray: actors, each holding one onnxruntime session.")
cpus_option = click.option("--cpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                           help="--ray: cores each actor reserves, and its onnxruntime threads.")
gpus_option = click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
                           help="--ray: GPUs each actor reserves (Ray assigns them); above 0 it runs on "
                                "onnxruntime's CUDA provider. 0.5 puts two actors on one GPU.")


def _cluster_options(function):
    return ray_option(workers_option(cpus_option(gpus_option(function))))


def _ray_only(ray_address, **options) -> None:
    """Options that mean nothing without --ray are refused rather than ignored."""
    if ray_address is None:
        given = [name for name, (value, default) in options.items() if value != default]
        if given:
            raise click.UsageError(f"{', '.join(given)} go with --ray")


PREPROCESS_HELP = (
    "How photos become model input. Presets: imagenet (resize the shorter side, centre-crop, ImageNet mean/std), "
    "imagenet-squash (resize to the input size without a crop), tf ([-1, 1] after Inception's 0.875 centre crop), "
    "tf-squash ([-1, 1], Keras applications), unit ([0, 1]), caffe (BGR, 0-255, less the ImageNet mean), yolo "
    "(ultralytics' letterbox, [0, 1]). Or a JSON file with size, and optionally resize (crop, squash, letterbox), "
    "resize_shorter, mean, std, channels (RGB, BGR), pixel_range (1 or 255) [default: MODEL's sidecar "
    "MODEL.preprocess.json if there is one, else imagenet].")


@main.command()
@click.argument("model", required=False, metavar="[MODEL]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the augmented model "
              "[default: beside MODEL, its stem + .rcam.onnx; for the bundled model, the current folder].")
@click.option("--layer", "layers", multiple=True, metavar="SEL", help="Layer to explain; repeat for several. "
              "`auto` (default: the last activation before global pooling), a tensor name, a node name, a torch "
              "module path such as `layer4`, a negative index from `onnx-rcam layers`, or `input`: the image "
              "itself (with --method lrp: the input-level LRP heatmap).")
@click.option("--method", "methods", multiple=True, type=click.Choice(list(METHODS)),
              help="CAM to add; repeat for several in one file [default: rcam]. rcam is Relevance-CAM; gradcam, "
                   "gradcampp, xgradcam, layercam and hirescam come from the gradient of the class score, computed "
                   "in the same graph; lrp is the LRP heatmap, the relevance summed over channels; lrp-pos, rcam-pos "
                   "and rcam-elem are maps of the positive relevance (README, methods). Each adds "
                   "METHOD/L/map, METHOD/L/raw, METHOD/L/activation and METHOD/L/relevance (METHOD/L/gradient for "
                   "the gradient methods).")
@composite_option
@click.option("--preprocess", default=None, metavar="PRESET|FILE",
              help="How images are prepared for MODEL (as for explain), which bounds the image's values for the zbox "
                   "rule (epsilon_gamma_box) [default: MODEL's sidecar MODEL.preprocess.json, else imagenet].")
@initial_option
@fuse_option
@click.option("--relu", is_flag=True, help="Clip rcam's raw map at 0 before normalising (the Grad-CAM convention, "
              "which the gradient methods always follow).")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Explain the K highest-scoring classes of each image in the same run: rcam/class becomes [N, K] "
                   "and each map [N, K, H, W]. With --scores of a detector or segmenter: K seeds per image.")
@click.option("--scores", default=None, metavar="OUTPUT",
              help="The output whose values are explained [default: the first, which must be class scores [N, K]]. "
                   "Any other output (a detector's [N, A, 5+C] or [N, 4+C, A], a segmenter's [N, C, H, W]) is "
                   "explained by the input rcam/seed, shaped like it, which must then be fed (`explain --task` "
                   "builds it).")
@input_shape_option
@precision_option
@verify_option
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def augment(model, output, layers, methods, composite, preprocess, initial, fuse, relu, top_k, scores, input_shape,
            precision, verify, force):
    """Add Relevance-CAM outputs (or other CAMs, --method) to MODEL and write the augmented model.

    The augmented model keeps the original inputs and outputs (same values, bit for bit, but for the rounding of
    fp16 and INT8 models that the README's 'Deployed models' describes) and adds, per layer L,
    rcam/L/map (N, H, W in [0, 1]), rcam/L/raw, rcam/L/relevance and rcam/L/activation, plus rcam/class and the
    optional input rcam/target (class per sample; -1 or omitted: the predicted class). With --scores of a detector
    or segmenter, the required input rcam/seed says what is explained instead.
    """
    methods = methods or ("rcam",)
    source = _model_argument(model)
    target = Path(output) if output else (Path(source.stem + ".rcam.onnx") if model is None
                                          else source.with_name(source.stem + ".rcam.onnx"))
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; pass --force to overwrite it")
    started = time.perf_counter()
    result = build(source, layers or ("auto",), composite, initial, relu, top_k, input_shape, methods,
                   input_bounds(source, preprocess), precision, verify, scores, fuse)
    save(result.model, target, force=force)
    seconds = time.perf_counter() - started

    click.echo(f"model     {source}{'  (bundled EfficientNet-Lite0)' if model is None else ''}")
    checked = "ran once in onnxruntime (CPU) on a synthetic batch" if verify else "not run (--no-verify)"
    click.echo(f"backward  {precision}; the written model {checked}")
    click.echo(f"methods   {', '.join(methods)}; explaining {result.logits!r}")
    if "rcam" in methods:
        click.echo(f"composite {composite}, initial relevance {initial if result.classifier else 'the seed'}")
    click.echo("layers")
    for t in result.targets:
        click.echo(f"  {t.key}" + (f"  ->  {t.tensor}" if t.key != t.tensor else ""))
    click.echo("added outputs")
    for name, elem_type, shape in result.outputs:
        click.echo(f"  {name:<40} {'int64' if elem_type == TensorProto.INT64 else 'float32'} {_shape(shape)}")
    seed = next(i for i in result.model.graph.input if i.name == SEED_INPUT)
    dims = [d.dim_value or d.dim_param for d in seed.type.tensor_type.shape.dim]
    if result.classifier:
        target_shape = "[N]" if top_k == 1 else f"[N, {top_k}]"
        click.echo(f"added inputs\n  {TARGET_INPUT:<40} int64 {target_shape}, optional (default -1: the "
                   f"{'predicted class' if top_k == 1 else 'k-th highest-scoring class'})")
        seed_shape = "[N, K]" if top_k == 1 else f"[N, {top_k}, K]"
        click.echo(f"  {SEED_INPUT:<40} float32 {seed_shape}, optional: the initial relevance itself (default NaN: "
                   f"built from {TARGET_INPUT})")
    else:
        click.echo(f"added inputs\n  {SEED_INPUT:<40} float32 {_shape(dims)}, required: the initial relevance at "
                   f"{result.logits!r} (shaped like it{', one per seed' if top_k > 1 else ''}), and the weights of "
                   f"the explained sum for the gradient methods")
    size = target.stat().st_size / 2**20
    click.echo(f"wrote     {target}  ({size:.1f} MiB, {seconds:.1f} s)")
    if result.drift:
        click.echo(drift_note(result.drift), err=True)


@main.command()
@click.argument("model", metavar="[MODEL]")
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="rcam-explanations",
              show_default=True, help="Folder for the overlays, maps and summary.")
@click.option("--layer", "layers", multiple=True, metavar="SEL", help="Layer to explain (as for augment); repeat "
              "for several [default: auto]. Ignored for an already augmented MODEL, which brings its own.")
@click.option("--target", type=int, help="Explain this class for every image [default: each image's prediction].")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Explain the K highest-scoring classes of each image, all in the same run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when onnxruntime can use it, else the CPU. The provider that ran is reported.")
@click.option("--preprocess", default=None, metavar="PRESET|FILE", help=PREPROCESS_HELP)
@click.option("--labels", type=click.Path(dir_okay=False, exists=True), help="Class names, one per line "
              "[default: ImageNet's for 1000-class models].")
@click.option("--method", type=click.Choice([*METHODS, "scorecam"]), default=None,
              help="The CAM to draw (see `onnx-rcam augment --help`) [default: lrp, the relevance summed over "
                   "channels: on three trained classifiers the map that no other beats significantly in the most "
                   "cells of reports/faithfulness.md, and on detectors and segmenters the one that stays on the "
                   "object explained; rcam is the paper's Relevance-CAM]; scorecam (Score-CAM) scores the image "
                   "masked by each channel of the layer instead, one forward pass per channel: slow.")
@click.option("--mask-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Score-CAM: masked images per onnxruntime run.")
@composite_option
@initial_option
@fuse_option
@click.option("--task", type=click.Choice(TASKS), default="classify", show_default=True,
              help="classify: class scores [N, K]. detect: a YOLO detector's [N, A, 5+C] (YOLOv5) or [N, 4+C, A] "
                   "(YOLOv8/11) output: boxes decoded, NMS, the best --detections each explained, all in one run "
                   "(use --preprocess yolo, the letterbox). segment: [N, C, H, W] class logits: the --top-k most "
                   "frequent predicted classes (or --target) each explained over its predicted pixels (or --box).")
@click.option("--scores", default=None, metavar="OUTPUT",
              help="detect, segment: the output to explain [default: the first].")
@click.option("--detections", type=click.IntRange(min=1), default=5, show_default=True,
              help="detect: the number of detections explained per image, best first.")
@click.option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="detect: the least score (class probability, times objectness for YOLOv5) of a detection.")
@click.option("--iou", type=click.FloatRange(0, 1), default=0.45, show_default=True,
              help="detect: boxes of one class overlapping more than this are suppressed (NMS).")
@click.option("--detect-layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="detect: the output's layout; auto takes [N, 4+C, A] (YOLOv8) where its middle axis is shorter.")
@click.option("--box", default=None, metavar="X1,Y1,X2,Y2",
              help="segment: explain the class over this box of each photo (its own pixels) instead of over the "
                   "pixels predicted as it.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="segment: explain the class over this mask instead (an image, non-zero pixels the region, "
                   "stretched over each photo).")
@input_shape_option
@precision_option
@verify_option
@click.option("--force", is_flag=True, help="Write into an output folder that already holds files.")
@click.option("--resume", is_flag=True, help="Continue a run that stopped part-way in the same output folder: the "
              "images whose maps (NAME.npz) it holds are skipped, and their rows kept in the summary.")
@click.option("--overlays", is_flag=True, help="--ray: also write the overlays and the sheet per image (without "
              "--ray they are always written; on a cluster the maps alone are the default).")
@_cluster_options
def explain(model, inputs, outdir, layers, target, top_k, batch_size, device, preprocess, labels, method, mask_batch,
            composite, initial, fuse, task, scores, detections, conf, iou, detect_layout, box, mask_path, input_shape,
            precision, verify, force, resume, overlays, ray_address, workers, cpus_per_worker, gpus_per_worker):
    """Explain photos: overlays per layer, one sheet per image, raw maps (.npz), summary.csv and summary.json.

    MODEL is a plain or an already augmented ONNX classifier (or detector, segmenter: --task); without it, the
    bundled model. INPUT is image files (JPEG, PNG, WebP, BMP) or folders. An unreadable image is reported and
    skipped; the exit status is then 1.

    With --ray, Ray workers explain the images (INPUT may be s3://, gs:// or hdfs:// URIs) and write NAME.npz (with
    --overlays the pictures too), summary.parquet (a row per image: classes, scores, provider, error) and run.json.
    The maps and rows are those of a run without --ray. A worker that dies is replaced and its batch run again.
    """
    model, inputs = _model_and_data(model, inputs)
    if not inputs:
        raise click.UsageError("give the images to explain (INPUT...), after the model if any")
    _ray_only(ray_address, **{"--overlays": (overlays, False), "--workers": (workers, 1),
                              "--cpus-per-worker": (cpus_per_worker, 1), "--gpus-per-worker": (gpus_per_worker, 0)})
    if target is not None and top_k > 1:
        raise click.UsageError("--target and --top-k > 1 exclude each other")
    if ray_address is not None:
        if task != "classify" or method == "scorecam" or device != "auto" or verify is False:
            raise click.UsageError("--ray explains classifiers with the in-graph methods; --task, --method scorecam, "
                                   "--device and --no-verify are for runs without it (--gpus-per-worker picks CUDA)")
        _explain_on_ray(_model_argument(model), list(inputs), Path(outdir), layers or ("auto",), target, top_k,
                        batch_size, preprocess, labels, method, composite, initial, fuse, input_shape, precision,
                        force, resume, overlays, ray_address, workers, cpus_per_worker, gpus_per_worker)
        return
    if task != "classify" and method == "scorecam":
        raise click.UsageError("--method scorecam explains classifiers only")
    if fuse and (task != "classify" or method == "scorecam"):
        raise click.UsageError("--fuse fuses a classifier's in-graph maps: leave out --task and --method scorecam")
    if (box is not None or mask_path is not None) and task != "segment":
        raise click.UsageError("--box and --mask are for --task segment")
    if box is not None and mask_path is not None:
        raise click.UsageError("--box and --mask exclude each other")
    options = TaskOptions(task, scores, detections, conf, iou, detect_layout, _parse_box(box),
                          Path(mask_path) if mask_path else None)
    _explain(_model_argument(model), list(inputs), Path(outdir), layers or ("auto",), target, top_k, batch_size,
             device, preprocess, labels, composite, force, input_shape, method, mask_batch, precision, verify, options,
             resume, initial, fuse)


@dataclass(frozen=True)
class TaskOptions:
    task: str = "classify"
    scores: str | None = None
    detections: int = 5
    conf: float = 0.25
    iou: float = 0.45
    layout: str = "auto"
    box: tuple[float, float, float, float] | None = None
    mask: Path | None = None

    def region(self, preprocessing):
        """The segment region of a picture at input resolution, from --box or --mask; None for neither."""
        if self.box is not None:
            return partial(box_region, preprocessing, self.box)
        if self.mask is not None:
            return partial(mask_region, preprocessing, load_image(self.mask))
        return None


def _parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: write the box as X1,Y1,X2,Y2 in the photo's pixels",
                                 param_hint="--box") from None
    if x2 <= x1 or y2 <= y1:
        raise click.BadParameter(f"{text!r}: X2 and Y2 must exceed X1 and Y1", param_hint="--box")
    return x1, y1, x2, y2


def _explain_on_ray(model, inputs, outdir, layers, target, top_k, batch_size, preprocess, labels, method, composite,
                    initial, fuse, input_shape, precision, force, resume, overlays, ray_address, workers,
                    cpus_per_worker, gpus_per_worker):
    from onnx_rcam.distributed import explain_dataset, list_images, quiet_ray_data

    check_output(outdir, force, resume)
    images = list_images(inputs)
    click.echo(f"model     {model}\nmethod    {method or DEFAULT_METHOD}\nlayers    {', '.join(layers)}\n"
               f"cluster   {'a local Ray cluster' if ray_address == LOCAL_CLUSTER else ray_address}, {workers} "
               f"workers x {cpus_per_worker} cores" + (f" x {gpus_per_worker:g} GPUs" if gpus_per_worker else ""))
    quiet_ray_data()
    with click.progressbar(length=len(images.names), label=f"explaining {len(images.names)} images",
                           file=sys.stderr) as bar:
        run = explain_dataset(model, images, outdir, layers, (method,) if method else (), top_k, preprocess, batch_size,
                              workers, gpus_per_worker, cpus_per_worker,
                              None if ray_address == LOCAL_CLUSTER else ray_address, composite, target, labels,
                              overlays, input_shape, precision, max(5, top_k), resume, force, bar.update, initial,
                              fuse)
    resumed = f" ({run.resumed} from the earlier run)" if run.resumed else ""
    click.echo(f"explained {run.explained} of {run.images + run.resumed} images{resumed} in {run.seconds:.1f} s "
               f"({run.images_per_second:.1f} img/s) on {', '.join(sorted(run.providers)) or 'no worker'}; wrote "
               f"{outdir}")
    for failure in run.failed:
        click.echo(f"failed    {failure['error']}", err=True)
    if run.failed_count > len(run.failed):
        click.echo(f"failed    ... {run.failed_count} in all: summary.parquet lists every one", err=True)
    if run.failed_count:
        raise click.exceptions.Exit(1)


@main.command()
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="rcam-demo", show_default=True)
@click.option("--force", is_flag=True, help="Write into an output folder that already holds files.")
def demo(outdir, force):
    """The bundled ImageNet EfficientNet-Lite0 explains the bundled photos at three depths, with the default map
    (lrp; `explain --method rcam` draws the paper's Relevance-CAM)."""
    _explain(default_model_path(), [str(default_model_path().parent / "images")], Path(outdir),
             ("auto", "_blocks.10", "_blocks.4"), None, 1, 8, "auto", None, None, "rcam", force)


def _explain(model, inputs, outdir, layers, target, top_k, batch_size, device, preprocess, labels, composite, force,
             input_shape=None, method=None, mask_batch=32, precision="fp32", verify=True,
             options: TaskOptions = TaskOptions(), resume: bool = False, initial: str = "contrastive",
             fuse: bool = False):
    check_output(outdir, force, resume)
    images = find_images(inputs)
    if not images:
        raise click.ClickException("no images found (JPEG, PNG, WebP or BMP)")
    if method == "scorecam":
        if top_k > 1:
            raise click.UsageError("--method scorecam explains one class per image: leave out --top-k")
        explainer = ScoreCamExplainer(model, layers=layers, device=device, batch_size=mask_batch,
                                      preprocessing=preprocess, input_shape=input_shape)
    else:
        explainer = Explainer(model, layers=layers, device=device, top_k=top_k, composite=composite,
                              initial=initial, preprocessing=preprocess, input_shape=input_shape, method=method,
                              precision=precision, verify=verify, task=options.task, scores=options.scores,
                              detections=options.detections, conf=options.conf, iou=options.iou,
                              layout=options.layout, fuse=fuse)
    click.echo(f"model     {model}\nmethod    {explainer.name}\nlayers    {', '.join(explainer.layers)}\n"
               f"provider  {explainer.provider_note}")
    started = time.perf_counter()
    done = 0

    def rate(_):
        return f"{done / max(time.perf_counter() - started, 1e-9):.1f} img/s"

    with click.progressbar(length=len(images), label=f"explaining {len(images)} images", item_show_func=rate,
                           file=sys.stderr) as bar:
        def advance(count):
            nonlocal done
            done += count
            bar.update(count)
        try:
            summary = explain_images(explainer, images, [Path(i) for i in inputs], outdir, batch_size, target,
                                     max(5, top_k), Path(labels) if labels else None, advance,
                                     options.region(explainer.preprocessing), resume)
        except BaseException as exc:
            if not isinstance(exc, RcamError):  # bad input stops the run as soon as it shows; resuming is no cure
                click.echo(f"\nstopped part-way: {outdir / 'summary.json'} records what was done; run the same "
                           f"command again with --resume to explain the rest", err=True)
            raise
    for row in summary.rows:
        name = Path(row["image"]).name
        if options.task == "detect":
            found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in row["detections"]) or "no detection"
            click.echo(f"  {name:<28} {found}")
        elif options.task == "segment":
            click.echo(f"  {name:<28} " + ", ".join(f"{label} ({share:.0%})" for label, share
                                                    in zip(row["explained_labels"], row["region_share"]) if label))
        else:
            best = row["top"][0]
            click.echo(f"  {name:<28} {best['label'].split(',')[0]:<28} {best['score']:.3f}")
    resumed = f" ({summary.resumed} from the earlier run)" if summary.resumed else ""
    click.echo(f"explained {len(summary.rows)} of {summary.images + summary.resumed} images{resumed} in "
               f"{summary.seconds:.1f} s ({summary.images_per_second:.1f} img/s); wrote {outdir}")
    for failure in summary.failed:
        click.echo(f"failed    {failure['error']}", err=True)
    if summary.failed:
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("model", required=False, metavar="[MODEL]")
@click.argument("inputs", nargs=-1, metavar="[DATA...]")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="rcam-evaluation",
              show_default=True, help="Folder for results.md, results.csv and metrics.png.")
@click.option("--method", "methods", multiple=True, type=click.Choice([*METHODS, "scorecam", *CONTROLS]),
              help="Method to evaluate; repeat for several [default: lrp, rcam and the Grad-CAM family; scorecam is "
                   "slow: one forward pass per channel of each layer]. random and centre are controls that know "
                   "nothing of the model (uniform noise; a Gaussian at the centre): what a map that explains "
                   "nothing scores.")
@click.option("--layer", "layers", multiple=True, metavar="SEL",
              help="Layer (as for augment); repeat for several, shallow to deep [default: auto].")
@click.option("--boxes", type=click.Path(exists=True), help="Ground-truth boxes for the pointing games: a Pascal "
              "VOC .xml file or folder, a COCO .json, or a .csv with image,xmin,ymin,xmax,ymax.")
@click.option("--steps", type=click.IntRange(min=2), default=32, show_default=True,
              help="Deletion and insertion: steps from no pixel changed to all.")
@click.option("--top-percent", type=click.FloatRange(0, 100, min_open=True), default=50, show_default=True,
              help="The binarised Average Drop and Increase in Confidence keep this share of each map's pixels, its "
                   "most salient (the Relevance-CAM authors' evaluation keeps 50).")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate the first N images only (sorted by path).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--mask-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Score-CAM: masked images per onnxruntime run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--preprocess", default=None, metavar="PRESET|FILE", help="As for explain.")
@click.option("--relu", is_flag=True, help="Clip rcam's raw map at 0 before normalising, as the Grad-CAM family "
              "does (rcam's maps are signed by default, so they keep more of the image).")
@composite_option
@initial_option
@fuse_option
@click.option("--task", type=click.Choice(["classify", "detect"]), default="classify", show_default=True,
              help="detect: a YOLO detector (see `explain --task`); the per-detection pointing game over its best "
                   "--detections detections per image: is each map's maximum inside its own box, and what share "
                   "of the map lies inside it.")
@click.option("--detections", type=click.IntRange(min=1), default=5, show_default=True, help="detect: as for explain.")
@click.option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="detect: as for explain.")
@click.option("--iou", type=click.FloatRange(0, 1), default=0.45, show_default=True, help="detect: as for explain.")
@click.option("--detect-layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="detect: as for explain.")
@input_shape_option
@click.option("--force", is_flag=True, help="Write into an output folder that already holds files.")
@_cluster_options
def evaluate(model, inputs, outdir, methods, layers, boxes, steps, top_percent, limit, batch_size, mask_batch, device,
             preprocess, relu, composite, initial, fuse, task, detections, conf, iou, detect_layout, input_shape,
             force, ray_address, workers, cpus_per_worker, gpus_per_worker):
    """Measure each method's maps at each layer on photos: Average Drop and Increase in Confidence
    (Chattopadhay et al. 2018) with the soft map and with its top --top-percent pixels, deletion and insertion AUC
    (Petsiuk et al. 2018), and with --boxes the pointing game and the energy-based pointing game, each with a
    bootstrap 95% interval over the photos. DATA is image files or folders. Without MODEL: the bundled model, its
    photos and their boxes. With --task detect: the per-detection pointing games of a detector.

    The explained class is each image's prediction; scores are its softmax probability.

    With --ray, Ray workers measure the images (DATA may be s3://, gs:// or hdfs:// URIs) and send back a few
    numbers per image, never the maps; the table is the one a run without --ray gives.
    """
    model, inputs = _model_and_data(model, inputs)
    _ray_only(ray_address, **{"--workers": (workers, 1), "--cpus-per-worker": (cpus_per_worker, 1),
                              "--gpus-per-worker": (gpus_per_worker, 0)})
    if ray_address is not None and (task != "classify" or device != "auto"):
        raise click.UsageError("--ray evaluates classifiers; --task detect and --device are for runs without it "
                               "(--gpus-per-worker picks CUDA)")
    if task == "detect" and (model is None or boxes):
        raise click.UsageError("--task detect needs MODEL and DATA, and takes its boxes from the detections "
                               "(leave out --boxes)")
    if model is None:
        model = default_model_path()
        if not inputs:  # neither MODEL nor DATA: the bundled photos and their boxes
            inputs = [str(model.parent / "images")]
            boxes = boxes or str(model.parent / "images" / "boxes.csv")
    elif not inputs:
        raise click.UsageError("give the photos to evaluate on (DATA), or neither MODEL nor DATA for the bundled ones")
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not force:
        raise click.ClickException(f"{outdir} already holds files; pass --force to write into it")
    pyplot()  # fails now, not after the measuring, where matplotlib is missing
    if ray_address is not None:
        from onnx_rcam.distributed import list_images, quiet_ray_data

        listed = list_images(inputs)
        images = listed.names[:limit]
    else:
        images = find_images(list(inputs))[:limit]
    if not images:
        raise click.ClickException("no images found (JPEG, PNG, WebP or BMP)")
    methods = methods or held_methods(model) or (
        DEFAULT_METHOD, "rcam", *(name for name, m in METHODS.items() if m.signal == "gradient"))
    ground_truth = read_boxes(boxes) if boxes else None
    click.echo(f"model     {model}\nmethods   {', '.join(methods)}\nimages    {len(images)}")
    with click.progressbar(length=len(images), label="evaluating", file=sys.stderr) as bar:
        if ray_address is not None:
            from onnx_rcam.distributed import evaluate_dataset

            quiet_ray_data()
            result = evaluate_dataset(Path(model), listed, methods, layers or ("auto",), ground_truth, batch_size,
                                      steps, mask_batch, preprocess, relu, input_shape, limit, workers,
                                      gpus_per_worker, cpus_per_worker,
                                      None if ray_address == LOCAL_CLUSTER else ray_address, bar.update, composite,
                                      initial, fuse, top_percent)
        elif task == "detect":
            result = evaluate_detections(Path(model), images, methods, layers or ("auto",), batch_size, device,
                                         preprocess, detections, conf, iou, detect_layout, progress=bar.update,
                                         input_shape=input_shape)
        else:
            result = run_evaluation(Path(model), images, methods, layers or ("auto",), ground_truth, batch_size,
                                    steps, mask_batch, device, preprocess, bar.update, relu, input_shape, composite,
                                    initial, fuse, top_percent)
    written = write_results(result, outdir, f"onnx-rcam evaluate: {Path(model).name}")
    for reason in result.skipped:
        click.echo(f"skipped   {reason}", err=True)
    click.echo(Path(written[0]).read_text())
    click.echo(f"wrote     {', '.join(str(p) for p in written)}")


@main.command()
@click.argument("model", required=False, metavar="[MODEL]")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="rcam-web", show_default=True,
              help="The site folder to write.")
@click.option("--layer", "layers", multiple=True, metavar="SEL", help="Layer to explain (as for augment; a plain "
              "model only); repeat for several. [default: auto]")
@click.option("--method", "methods", multiple=True, type=click.Choice(list(METHODS)),
              help="CAM to add (a plain model only); repeat for several. [default: rcam]")
@click.option("--preprocess", default=None, metavar="PRESET|FILE", help=PREPROCESS_HELP)
@click.option("--labels", type=click.Path(dir_okay=False, exists=True), help="Class names, one per line.")
@input_shape_option
@click.option("--force", is_flag=True, help="Write into an output folder that already holds files.")
def web(model, outdir, layers, methods, preprocess, labels, input_shape, force):
    """Write a static viewer of MODEL (default: the bundled one): the augmented model runs in the browser
    (onnxruntime-web, WebAssembly) on photos the user picks; nothing leaves their machine."""
    page = write_site(_model_argument(model), Path(outdir), layers=layers or ("auto",), methods=methods or ("rcam",),
                      preprocess=preprocess, labels=labels, input_shape=input_shape, force=force)
    click.echo(f"wrote {page.parent}/; serve it with `python -m http.server -d {page.parent} 8000` and open "
               "http://localhost:8000/ (nothing leaves the machine)")


@main.command()
@click.argument("model", required=False, metavar="[MODEL]")
@input_shape_option
@click.option("--scores", default=None, metavar="OUTPUT",
              help="The output to explain, as for augment [default: the first, which must be class scores].")
def layers(model, input_shape, scores):
    """List the layers of MODEL that can be explained, shallowest first.

    Use the INDEX (negative), the TENSOR name or a SCOPE prefix with `onnx-rcam augment --layer`. GRID is the
    layer's h x w; a transformer's [N, T, D] token layers show their patch grid and the class, distillation or
    register tokens before the patches (+1, +2...), which the maps leave out; [N, h, w, C] layers (Swin, timm's
    ConvNeXt blocks) say channels-last.
    """
    source = _model_argument(model)
    options = candidate_layers(source, input_shape, scores)
    rows = [("INDEX", "TENSOR", "OP", "SHAPE", "GRID", "DOWN", "SCOPE")]
    for c in options:
        grid = c.tokens.describe() if c.tokens else "x".join(map(str, c.shape[2:]))
        rows.append((str(c.index - len(options)), c.tensor, c.op, _shape(c.shape), grid, f"{c.downsampling:g}x",
                     c.scope or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def run(args: list[str] | None = None):
    """Entry point: user errors print one clear message and exit non-zero, with no traceback."""
    try:
        # Without standalone mode, click returns a command's `Exit(code)` instead of raising it.
        code = main(args, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except RcamError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
