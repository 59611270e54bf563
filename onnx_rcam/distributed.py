"""Explain and evaluate whole datasets on a Ray cluster (`pip install "onnx-rcam[ray]"`), with the files and the
numbers of the single-machine run.

    from onnx_rcam.distributed import explain_dataset
    explain_dataset("model.onnx", "s3://bucket/validation/", "out/", layers=["auto"], workers=8,
                    gpus_per_worker=1)

The driver augments the model once and puts the augmented bytes in Ray's object store. It lists the images and cuts
the list into the batches a single-machine run makes (the same images in the same batches: onnxruntime's results
for one image can depend on the batch size, so the same batches give the same bits). Ray Data streams the batches
through a reading stage (the images' bytes, from any filesystem pyarrow reads: local, S3, GCS, HDFS) into a pool of
actors, each holding one onnxruntime session built once, which decode and preprocess exactly as onnx_rcam.images
does and write each image's files as `onnx-rcam explain` writes them (explain.BatchWriter). The driver holds one
batch of summary rows at a time and streams them into one Parquet file. Ray retries a batch whose worker died;
each .npz is written under a temporary name and renamed, so a retried batch rewrites the same files whole.

Ray is optional: this module imports without it, and each entry point says how to install it.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import RcamError
from .evaluate import Evaluation, Evaluator, add_tallies
from .explain import BatchWriter, batches, check_output, input_folders, output_stem, split_done, timed_run
from .explainer import Explainer
from .images import IMAGE_SUFFIXES, decode_image, find_images
from .load import load
from .metrics import TOP_PERCENT

INSTALL = 'pip install "onnx-rcam[ray]"'
SUMMARY_PARQUET, RUN_JSON = "summary.parquet", "run.json"
BLOCKS_PER_WORKER = 16
FAILURES_KEPT = 100  # failures the driver keeps to report; the summary holds every one


def ray_modules():
    """(ray, pyarrow), or an error that says how to install them."""
    try:
        import pyarrow
        import ray
        import ray.data  # noqa: F401  (ray without its [data] extra has no ray.data)
    except ImportError as exc:
        raise RcamError(f"running on Ray needs Ray Data ({exc.name} is missing): {INSTALL}") from None
    return ray, pyarrow


def summary_schema():
    """The Parquet summary: one row per image, explained or not."""
    _, pa = ray_modules()
    return pa.schema([
        ("image", pa.string()),             # as given: a path, or a URI (s3://bucket/photos/a.jpg)
        ("status", pa.string()),            # ok, or failed
        ("error", pa.string()),             # why it failed (null where ok)
        ("explained_classes", pa.list_(pa.int64())),
        ("explained_labels", pa.list_(pa.string())),
        ("top_classes", pa.list_(pa.int64())),
        ("top_labels", pa.list_(pa.string())),
        ("top_scores", pa.list_(pa.float64())),  # softmax probabilities, rounded to 6 digits as summary.json's
        ("provider", pa.string()),          # the onnxruntime provider that ran it
        ("maps", pa.string()),              # the .npz, relative to the output folder
    ])


def summary_record(row: dict, provider: str, maps: str) -> dict:
    """A summary.json row of `explain` (classify) as a Parquet summary row."""
    return {"image": row["image"], "status": "ok", "error": None, "explained_classes": row["explained"],
            "explained_labels": row["explained_labels"], "top_classes": [t["class"] for t in row["top"]],
            "top_labels": [t["label"] for t in row["top"]], "top_scores": [t["score"] for t in row["top"]],
            "provider": provider, "maps": maps}


@dataclass
class ImageList:
    """The images of a run: names as given (paths or URIs: the summary's `image`, and what output paths derive
    from), where the filesystem finds each, and the sources that are folders."""

    names: list[str]
    locations: list[str]
    folders: list[str]
    filesystem: object  # a pyarrow.fs.FileSystem


def list_images(sources) -> ImageList:
    """Local files and folders (found as `explain` finds them), or URIs of one filesystem that pyarrow reads
    (s3://, gs://, hdfs://), passed through unchanged; a folder's images are listed recursively and sorted."""
    ray_modules()
    from pyarrow import fs as pafs

    sources = [str(source) for source in sources]
    remote = [source for source in sources if "://" in source]
    if not remote:
        found = find_images(sources)
        folders = [str(folder) for folder in input_folders([Path(source) for source in sources])]
        return ImageList([str(p) for p in found], [os.path.abspath(p) for p in found], folders,
                         pafs.LocalFileSystem())
    schemes = {source.split("://", 1)[0] for source in sources}
    if len(remote) != len(sources) or len(schemes) > 1:
        raise RcamError(f"the sources mix filesystems ({', '.join(sorted(schemes))}): give sources of one "
                        "filesystem per run")
    filesystem, _ = pafs.FileSystem.from_uri(remote[0])
    names, locations, folders = [], [], []
    for source in sources:
        location = pafs.FileSystem.from_uri(source)[1]
        info = filesystem.get_file_info(location)
        if info.type == pafs.FileType.Directory:
            folders.append(source)
            listed = filesystem.get_file_info(pafs.FileSelector(location, recursive=True))
            for path in sorted(f.path for f in listed if f.is_file and
                               PurePosixPath(f.path).suffix.lower() in IMAGE_SUFFIXES):
                names.append(f"{source.rstrip('/')}/{PurePosixPath(path).relative_to(location)}")
                locations.append(path)
        elif info.type == pafs.FileType.File:
            names.append(source)
            locations.append(location)
        else:
            raise RcamError(f"{source}: no such file or folder")
    return ImageList(names, locations, folders, filesystem)


def image_list(source) -> ImageList:
    """source: a path or URI, a list of them, or their ImageList (listed already)."""
    images = source if isinstance(source, ImageList) else list_images(
        [source] if isinstance(source, (str, os.PathLike)) else source)
    if not images.names:
        raise RcamError("no images found (JPEG, PNG, WebP or BMP)")
    return images


def batch_rows(images: ImageList, names: list[str], batch_size: int) -> list[dict]:
    """The Ray dataset's rows: the batches a single-machine run makes of `names`, each with where its files are."""
    location = dict(zip(images.names, images.locations))
    return [{"names": batch, "locations": [location[name] for name in batch]} for batch in batches(names, batch_size)]


def read_batch(row: dict, filesystem) -> dict:
    """The reading stage: a batch's image bytes, or for each file that cannot be read, why."""
    data, errors = [], []
    for name, location in zip(row["names"], row["locations"]):
        try:
            with filesystem.open_input_stream(location) as stream:
                data.append(stream.read())
            errors.append(None)
        except OSError as exc:
            data.append(None)
            errors.append(f"{name}: cannot read the image ({exc})")
    return {"names": list(row["names"]), "data": data, "errors": errors}


def reader(batch: dict):
    """read(name) for BatchWriter and Evaluator.measure: the picture from a batch's bytes, decoded as
    onnx_rcam.images decodes a file (EXIF orientation included)."""
    fetched = {name: (data, error) for name, data, error in zip(batch["names"], batch["data"], batch["errors"])}

    def read(name):
        data, error = fetched[name]
        if error is not None:
            raise RcamError(error)
        return decode_image(data, name)

    return read


def one_batch(table) -> dict:
    """The one row of a Ray batch of size 1 (a pyarrow table: a batch of images, as the driver cut them)."""
    return {name: table[name][0].as_py() for name in table.column_names}


class ExplainWorker:
    """A Ray actor: one augmented onnxruntime session, built once, explains batch after batch."""

    def __init__(self, model, preprocessing, settings: dict):
        ray, pyarrow = ray_modules()
        import onnx

        self.pyarrow = pyarrow
        device = "cuda" if settings["gpus_per_worker"] else "cpu"
        self.explainer = Explainer(onnx.load_from_string(ray.get(model[0])), device=device,
                                   preprocessing=preprocessing, method=settings["methods"][0],
                                   threads=settings["threads"])
        self.write = BatchWriter(self.explainer, settings["folders"], Path(settings["outdir"]), settings["target"],
                                 settings["top_k"], settings["labels"], overlays=settings["overlays"],
                                 also=settings["methods"][1:])

    def __call__(self, table):
        batch = one_batch(table)
        rows, failed = self.write(batch["names"], reader(batch))
        done = {row["image"]: row for row in rows}
        errors = {failure["image"]: failure["error"] for failure in failed}
        records = []
        for name in batch["names"]:  # in the batch's order, as the single-machine summary lists them
            if name in done:
                maps = f"{output_stem(name, self.write.folders).as_posix()}.npz"
                records.append(summary_record(done[name], self.explainer.provider, maps))
            else:
                records.append({"image": name, "status": "failed", "error": errors[name],
                                "provider": self.explainer.provider})
        return self.pyarrow.Table.from_pylist(records, schema=summary_schema())


class EvaluateWorker:
    """A Ray actor for `evaluate`: its own Evaluator, built once; it returns each batch's tallies (a few numbers per
    image, method and layer), never the maps."""

    def __init__(self, models, preprocessing, settings: dict):
        ray, self.pyarrow = ray_modules()
        import onnx

        model, plain = (onnx.load_from_string(ray.get(ref)) for ref in models)
        self.evaluator = Evaluator(model, settings["methods"], settings["layers"], settings["boxes"],
                                   settings["steps"], settings["mask_batch"],
                                   "cuda" if settings["gpus_per_worker"] else "cpu", preprocessing,
                                   settings["relu"], settings["input_shape"], plain=plain,
                                   threads=settings["threads"], top_percent=settings["top_percent"],
                                   measure=settings["measure"])

    def __call__(self, table):
        batch = one_batch(table)
        tallies, skipped, measured = self.evaluator.measure(batch["names"], reader(batch))
        # Pickled: the tallies keep each value's numpy type, so the driver's means are a single machine's bits.
        return self.pyarrow.table({"tallies": [pickle.dumps(tallies)], "skipped": [skipped], "measured": [measured],
                                   "images": [len(batch["names"])]})


@dataclass
class ClusterSettings:
    """How wide a run goes (and the functions' `address`: None starts a local cluster on every core of this
    machine, `auto` joins the cluster this machine belongs to, ray://HOST:10001 a remote one; a Ray already
    initialised in this process is used as it is). workers: actors, each with one onnxruntime session.
    cpus_per_worker: the cores each actor reserves, and its onnxruntime threads. gpus_per_worker: the GPUs each
    actor reserves (Ray sets its CUDA_VISIBLE_DEVICES), which then runs on onnxruntime's CUDA provider."""

    workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0

    def check(self) -> None:
        if self.workers < 1 or self.cpus_per_worker < 1 or self.gpus_per_worker < 0:
            raise RcamError(f"workers and cpus_per_worker must be at least 1 and gpus_per_worker at least 0, got "
                            f"{self.workers}, {self.cpus_per_worker} and {self.gpus_per_worker}")


def _stream(chunks: list[dict], filesystem, worker: type, constructor_args: tuple, cluster: ClusterSettings):
    """Ray Data's pipeline: the batches as the driver cut them, their bytes read by a light stage, then the actors;
    yields each batch's output table, in the batches' order."""
    if not chunks:  # everything resumed
        return
    ray, _ = ray_modules()
    # A block is a task's share: several blocks per worker balance the load, and a worker that dies costs its
    # block's batches again, not the run's.
    dataset = ray.data.from_items(chunks, override_num_blocks=min(len(chunks), BLOCKS_PER_WORKER * cluster.workers))
    dataset.context.execution_options.preserve_order = True  # the summary in the images' order, as one machine's
    dataset.context.enable_progress_bars = False  # the caller shows one bar for the whole run
    # Reading takes no core from the actors: it waits on I/O, and on a full cluster it would otherwise wait forever.
    dataset = dataset.map(read_batch, fn_kwargs={"filesystem": filesystem}, num_cpus=0)
    dataset = dataset.map_batches(worker, batch_size=1, batch_format="pyarrow", fn_constructor_args=constructor_args,
                                  compute=ray.data.ActorPoolStrategy(size=min(cluster.workers, len(chunks))),
                                  num_cpus=cluster.cpus_per_worker,
                                  num_gpus=cluster.gpus_per_worker or None)
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def quiet_ray_data() -> None:
    """For the command line, which draws its own progress bar: Ray Data's INFO lines (plans, log folders) would
    interleave with it. Warnings and errors still show."""
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)


class _RayRun:
    """ray.init on entry where this process has no Ray yet, and shutdown on exit if it started it."""

    def __init__(self, address: str | None):
        self.address, self.started = address, False

    def __enter__(self):
        ray, _ = ray_modules()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
            self.started = True
        return ray

    def __exit__(self, *exc):
        if self.started:
            ray_modules()[0].shutdown()


@dataclass
class DatasetRun:
    """What explain_dataset did. failed: the first FAILURES_KEPT failures (the summary holds every one)."""

    images: int = 0        # images handled by this run, explained or failed
    explained: int = 0
    failed_count: int = 0
    failed: list[dict] = field(default_factory=list)
    resumed: int = 0       # images an earlier run explained, skipped
    seconds: float = 0.0
    providers: set = field(default_factory=set)
    interrupted: str | None = None
    remaining: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def explain_dataset(model, source, output, layers=("auto",), methods=(), top_k: int = 1,
                    preprocess=None, batch_size: int = 8, workers: int = 1, gpus_per_worker: float = 0,
                    cpus_per_worker: int = 1, address: str | None = None, composite="rcam", target: int | None = None,
                    labels: str | Path | None = None, overlays: bool = False, input_shape=None,
                    precision: str = "fp32", shown_classes: int = 5, resume: bool = False, force: bool = False,
                    progress=None, initial: str = "contrastive", fuse: bool = False) -> DatasetRun:
    """Explain every image under `source` (a path or URI, a list of them, or their ImageList) on Ray, writing into the
    folder `output` what `onnx-rcam explain` writes per image (NAME.npz, and with overlays=True the overlays and
    sheet), and summary.parquet (summary_schema) and run.json for the run. `output` must be a folder every worker
    can write: this machine's for a local cluster, a shared filesystem for a cluster of machines.

    model: a plain model (augmented here once, with layers, methods, top_k, composite, initial, fuse, input_shape,
    precision) or an already augmented one. methods: the first is the one whose maps the .npz holds as LAYER.map and
    LAYER.raw, as `explain` writes them [default: the Explainer's]; the others add METHOD.LAYER.map and
    METHOD.LAYER.raw. preprocess: as for explain (default: the model's sidecar, else imagenet). shown_classes: the
    top classes per image in the summary. Unreadable images are recorded in the summary, never fatal. resume: skip
    the images whose .npz the folder holds and the earlier summary lists, keeping their rows; without it (or force)
    a folder with files is refused.
    progress: called with the number of images after each batch (and first with the number resumed). See
    ClusterSettings for the cluster arguments."""
    cluster = ClusterSettings(workers, cpus_per_worker, gpus_per_worker)
    cluster.check()
    ray_modules()
    import pyarrow.parquet as pq

    outdir = Path(output).absolute()
    check_output(outdir, force, resume)
    methods = tuple(methods)
    images = image_list(source)
    explainer = Explainer(model, layers, "cpu", top_k, composite, preprocessing=preprocess, input_shape=input_shape,
                          method=methods[0] if methods else None, also=methods[1:], precision=precision,
                          initial=initial, fuse=fuse)
    methods = (explainer.name, *methods[1:])  # none given: the Explainer's default, or what the model holds
    if explainer.task != "classify":
        raise RcamError("explain_dataset explains classifiers; explain detectors and segmenters with `onnx-rcam "
                        "explain --task` on one machine")
    outdir.mkdir(parents=True, exist_ok=True)
    run = DatasetRun()
    done, todo = _resumed(images, outdir) if resume else ([], images.names)
    run.resumed = len(done)
    settings = {"methods": methods, "threads": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
                "outdir": str(outdir), "folders": images.folders, "target": target, "top_k": shown_classes,
                "labels": Path(labels).read_text().splitlines() if labels else None, "overlays": overlays}
    chunks = batch_rows(images, todo, batch_size)
    partial = outdir / f".{SUMMARY_PARQUET}.partial"
    described = {"methods": list(methods), "layers": explainer.layers}
    with _RayRun(address) as ray:
        model_ref = ray.put(explainer.model.SerializeToString())
        arguments = ([model_ref], explainer.preprocessing, settings)
        del explainer  # the driver's session is not needed any more: the workers hold their own
        writer = pq.ParquetWriter(partial, summary_schema())
        try:
            _keep_earlier_rows(outdir / SUMMARY_PARQUET, set(done), writer)
            if progress and done:
                progress(len(done))
            with timed_run(run, len(todo)):
                for table in _stream(chunks, images.filesystem, ExplainWorker, arguments, cluster):
                    writer.write_table(table)
                    _count(run, table)
                    if progress:
                        progress(table.num_rows)
        finally:
            writer.close()
            os.replace(partial, outdir / SUMMARY_PARQUET)
            _write_run(outdir, run, described, cluster)
    return run


def _resumed(images: ImageList, outdir: Path) -> tuple[list[str], list[str]]:
    """(the images done, the rest): done where an earlier run wrote the .npz and its summary has the row. A driver
    killed outright (a lost machine) leaves no summary of its run: its images are explained again, the same."""
    with_maps, _ = split_done(images.names, images.folders, outdir)
    summary = outdir / SUMMARY_PARQUET
    if not with_maps or not summary.is_file():
        return [], images.names
    import pyarrow.parquet as pq

    earlier = pq.read_table(summary, columns=["image", "status"]).to_pydict()
    listed = {image for image, status in zip(earlier["image"], earlier["status"]) if status == "ok"}
    done = {name for name in with_maps if name in listed}
    return [name for name in images.names if name in done], [name for name in images.names if name not in done]


def _keep_earlier_rows(summary: Path, done: set[str], writer) -> None:
    """Copy an earlier summary's rows of the images resumed (their .npz exists), one row group at a time."""
    if not done or not summary.is_file():
        return
    import pyarrow
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    resumed = pyarrow.array(sorted(done), pyarrow.string())
    for group in pq.ParquetFile(summary).iter_batches():
        kept = group.filter(pc.and_(pc.equal(group["status"], "ok"), pc.is_in(group["image"], value_set=resumed)))
        if kept.num_rows:
            writer.write_batch(kept)


def _count(run: DatasetRun, table) -> None:
    statuses, errors = table["status"].to_pylist(), table["error"].to_pylist()
    run.images += len(statuses)
    run.explained += statuses.count("ok")
    run.providers.update(p for p in table["provider"].to_pylist() if p)
    for image, status, error in zip(table["image"].to_pylist(), statuses, errors):
        if status != "ok":
            run.failed_count += 1
            if len(run.failed) < FAILURES_KEPT:
                run.failed.append({"image": image, "error": error})


def _write_run(outdir: Path, run: DatasetRun, described: dict, cluster: ClusterSettings) -> None:
    """run.json: the run's totals and settings, beside the summary."""
    found = {**described, "providers": sorted(run.providers), "workers": cluster.workers,
             "cpus_per_worker": cluster.cpus_per_worker, "gpus_per_worker": cluster.gpus_per_worker,
             "images": run.images, "explained": run.explained, "failed": run.failed_count, "resumed": run.resumed,
             "seconds": round(run.seconds, 3), "images_per_second": round(run.images_per_second, 2)}
    if run.interrupted:
        found.update(interrupted=run.interrupted, remaining=run.remaining,
                     resume="run the same command again with --resume: it skips the images explained here")
    partial = outdir / f".{RUN_JSON}.partial"
    partial.write_text(json.dumps(found, indent=2) + "\n")
    os.replace(partial, outdir / RUN_JSON)


def evaluate_dataset(model, source, methods=("rcam",), layers=("auto",), boxes=None, batch_size: int = 8,
                     steps: int = 32, mask_batch: int = 32, preprocess=None, relu: bool = False, input_shape=None,
                     limit: int | None = None, workers: int = 1, gpus_per_worker: float = 0, cpus_per_worker: int = 1,
                     address: str | None = None, progress=None, composite="rcam", initial: str = "contrastive",
                     fuse: bool = False, top_percent: float = TOP_PERCENT, measure=None) -> Evaluation:
    """onnx_rcam.evaluate.evaluate on Ray: each worker measures its batches and returns their tallies (a few numbers
    per image, method and layer, never the maps); the driver adds them up in the images' order, so the rows are
    those of the single-machine run. limit: the first N images only. composite, initial, fuse, top_percent, measure: as
    for evaluate (the first three applied where the driver augments the model). Cluster arguments: see
    ClusterSettings."""
    cluster = ClusterSettings(workers, cpus_per_worker, gpus_per_worker)
    cluster.check()
    images = image_list(source)
    names = images.names[:limit]
    if not names:
        raise RcamError("no images found (JPEG, PNG, WebP or BMP)")
    # The driver's Evaluator augments the model once and sums the tallies; the workers get its models.
    evaluator = Evaluator(model, methods, layers, boxes, steps, mask_batch, "cpu", preprocess, relu, input_shape,
                          composite=composite, initial=initial, fuse=fuse, top_percent=top_percent, measure=measure)
    graph = evaluator.explainers.get("graph", evaluator.first)
    settings = {"methods": evaluator.methods, "layers": layers, "boxes": boxes, "steps": steps,
                "mask_batch": mask_batch, "gpus_per_worker": gpus_per_worker, "relu": relu,
                "input_shape": input_shape, "threads": cpus_per_worker, "top_percent": top_percent,
                "measure": measure}
    chunks = batch_rows(images, names, batch_size)
    tallies, skipped, read = evaluator.empty_tallies(), [], []
    with _RayRun(address) as ray:
        refs = [ray.put(graph.model.SerializeToString()), ray.put(load(model).SerializeToString())]
        for table in _stream(chunks, images.filesystem, EvaluateWorker, (refs, graph.preprocessing, settings),
                             cluster):
            for batch_tallies, unreadable, measured, count in zip(
                    table["tallies"].to_pylist(), table["skipped"].to_pylist(), table["measured"].to_pylist(),
                    table["images"].to_pylist()):
                add_tallies(tallies, pickle.loads(batch_tallies))
                skipped += unreadable
                read += measured
                if progress:
                    progress(count)
    return evaluator.evaluation(tallies, skipped, read)
