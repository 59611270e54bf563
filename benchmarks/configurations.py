"""The benchmarked models and their stage configurations, shared by speed.py and cuda_check.py.

ResNet50 and VGG16 are tests/zoo.py's random-weight models, exported with the TorchScript exporter (needs torch and
tests/ on sys.path, imported only when exporting); EfficientNet-Lite0 is the bundled ImageNet model.
Stage configurations per model: the last stage only, two stages (the one at stride 8 and the last), every stage.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

IMAGE_SHAPE = (3, 224, 224)  # of every benchmarked model's input, batch aside
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "efficientnet_lite0.onnx"

# The max-pool outputs, at strides 2 to 32, as tests/test_models.py explains VGG16.
VGG16_POOLS = ["features.4", "features.9", "features.16", "features.23", "features.30"]
RESNET_STAGES = ["layer1", "layer2", "layer3", "layer4"]
# EfficientNet-Lite0: the last block of each resolution, 56, 28 and 14 px, and `auto` (the head's activation at 7 px).
EFFICIENTNET_STAGES = ["_blocks.2", "_blocks.4", "_blocks.10", "auto"]


@dataclass(frozen=True)
class Subject:
    name: str
    stages: dict[str, list[str]]  # configuration -> layers, in the order augment gets them
    zoo_builder: str | None  # function of tests/zoo.py (or of `module`), None for the bundled model
    input_name: str = "input"
    module: str = "zoo"  # the tests' module holding zoo_builder
    tokens: tuple[int, int, int] | None = None  # a transformer's (extra tokens, patch rows, patch columns)

    def file_name(self, width: float) -> str:
        return f"{self.name}.onnx" if self.zoo_builder is None or width == 1.0 else f"{self.name}-w{width:g}.onnx"

    def torch_model(self, width: float):
        """The random-weight torch model (tests/ must be importable)."""
        import importlib

        import zoo

        return zoo.randomize(getattr(importlib.import_module(self.module), self.zoo_builder)(width=width), seed=0)


def stage_configurations(stages: list[str], stride_8: str) -> dict[str, list[str]]:
    return {"last stage": stages[-1:], "two stages": [stride_8, stages[-1]], "all stages": list(stages)}


# ViT-S/16: every third block's normalised input (the last one is `auto`); ConvNeXt-T: each stage's output.
VIT_BLOCKS = [f"blocks.{i}.norm1" for i in (2, 5, 8, 11)]
CONVNEXT_STAGES = [f"stages.{i}" for i in range(4)]

SUBJECTS = {
    "resnet50": Subject("resnet50", stage_configurations(RESNET_STAGES, "layer2"), "resnet50"),
    "vgg16": Subject("vgg16", stage_configurations(VGG16_POOLS, "features.16"), "vgg16"),
    "efficientnet_lite0": Subject("efficientnet_lite0", stage_configurations(EFFICIENTNET_STAGES, "_blocks.4"), None),
    "vit_s16": Subject("vit_s16", stage_configurations(VIT_BLOCKS, "blocks.5.norm1"), "vit_small",
                       module="families", tokens=(1, 14, 14)),
    "convnext_t": Subject("convnext_t", stage_configurations(CONVNEXT_STAGES, "stages.1"), "ConvNeXtTiny",
                          module="families"),
}


def model_file(subject: Subject, folder: Path, width: float) -> Path:
    """The plain ONNX file of `subject` in `folder`, exported (or copied, for the bundled model) if missing."""
    path = folder / subject.file_name(width)
    if path.exists():
        return path
    if subject.zoo_builder is None:
        shutil.copyfile(BUNDLED_MODEL, path)
        return path
    import zoo

    return zoo.export(subject.torch_model(width), path, "torchscript")


def save(model: onnx.ModelProto, path: Path) -> Path:
    """One file, or external data where the protobuf would pass its 2 GiB limit."""
    external = model.ByteSize() > 2**31 - 2**26
    onnx.save(model, path, save_as_external_data=external, location=path.name + ".data")
    return path


def session_options(threads: int | None = None, profile_prefix: str | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the augmented model's rcam/target input-initializer warning is expected
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options
