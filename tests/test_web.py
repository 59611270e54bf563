"""The static viewer (onnx_rcam.web, web/): its page, run in a real headless Chromium with onnxruntime-web's WASM
backend, preprocesses the bundled photo exactly as onnx_rcam.images.Preprocessing does and returns the Python run's
top class and maps. Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no
websocket package. Skips when Chromium or the onnxruntime-web files (web/dist, `npm ci && npm run build`) are
missing."""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import onnx_rcam
from onnx_rcam.errors import RcamError
from onnx_rcam.images import Preprocessing, load_image
from onnx_rcam.models_path import models_folder
from onnx_rcam.web import assets_folder, missing_assets, write_site

LAYERS = ["auto", "_blocks.10", "_blocks.4"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "web" / "screenshot.png"


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if (found := shutil.which(name))), None)


needs_assets = pytest.mark.skipif(bool(missing_assets()), reason="the viewer's onnxruntime-web files are missing "
                                  f"({', '.join(missing_assets())}): `npm ci && npm run build` in web/")


def _above(fd: int, least: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, least)
    os.close(fd)
    return moved


class DevTools:
    """A headless Chromium driven over the DevTools protocol on fds 3 and 4 (NUL-separated JSON messages)."""

    def __init__(self, executable: str, profile: str, width: int = 1280, height: int = 720):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends move to fds 3 (commands in) and 4 (replies out), where Chromium expects them; a Python
        # trampoline does it (the launcher script's dash takes single-digit fds only), from fds 10 and above.
        to_browser_r, from_browser_w = (_above(fd, 10) for fd in (to_browser_r, from_browser_w))
        trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                      "os.execv(sys.argv[3], sys.argv[3:])")
        self.process = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(to_browser_r), str(from_browser_w), executable, "--headless",
             "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next, self.events, self.session = b"", 0, [], None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Runtime.enable")
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe: {self.process.stderr.read().decode()[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params):
        self._next += 1
        command = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            command["sessionId"] = self.session
        try:
            os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"Chromium exited: {self.process.stderr.read().decode()[-2000:]}") from None
        while True:
            message = self._message()
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console(self) -> list[str]:
        """What the page logged or threw, for failure messages."""
        lines = []
        for event in self.events:
            if event.get("method") == "Runtime.consoleAPICalled":
                lines.append(" ".join(str(a.get("value", a.get("description", ""))) for a in event["params"]["args"]))
            elif event.get("method") == "Runtime.exceptionThrown":
                lines.append(str(event["params"]["exceptionDetails"]))
        return lines

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if missing_assets():
        pytest.skip(f"the viewer's onnxruntime-web files are missing ({', '.join(missing_assets())}): "
                    "`npm ci && npm run build` in web/")
    folder = tmp_path_factory.mktemp("site")
    write_site(onnx_rcam.default_model_path(), folder, layers=LAYERS, force=True)
    for photo in (models_folder() / "images").glob("*.jpg"):
        shutil.copyfile(photo, folder / photo.name)
    # A phone photo stored sideways (EXIF orientation 6: shown rotated 90 degrees clockwise), and a PNG.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(folder / "chelsea.jpg").save(folder / "sideways.jpg", exif=exif, quality=90)
    Image.open(folder / "coffee.jpg").save(folder / "coffee.png")
    return folder


@pytest.fixture(scope="module")
def browser(site):
    """(Chromium, the served site's address)."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    profile = tempfile.mkdtemp(prefix="rcam-chromium-")
    devtools = DevTools(executable, profile)
    try:
        yield devtools, f"http://127.0.0.1:{server.server_port}"
    finally:
        devtools.close()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser):
    """The page's result for ?photo=chelsea.jpg, with the model input it made and a screenshot."""
    devtools, address = browser
    started = time.monotonic()
    devtools.send("Page.navigate", url=f"{address}/index.html?photo=chelsea.jpg")
    text = ""
    while time.monotonic() - started < 180:
        text = devtools.evaluate("document.getElementById('result')?.textContent ?? ''") or ""
        if text:
            break
        time.sleep(0.2)
    assert text, f"the page wrote no result in 180 s; console: {devtools.console()}"
    result = json.loads(text)
    assert result["status"] == "done", f"{result}; console: {devtools.console()}"
    result["page_seconds"] = time.monotonic() - started
    result["input"] = np.array(devtools.evaluate("Array.from(window.rcamInput)"), dtype=np.float32)
    devtools.evaluate("document.querySelector('details').open = false")
    result["screenshot"] = base64.b64decode(devtools.send("Page.captureScreenshot", format="png")["data"])
    return result


@pytest.fixture(scope="module")
def python_run(site):
    """The same photo through onnx_rcam.images.Preprocessing and onnxruntime's CPU provider."""
    config = json.loads((site / "site.json").read_text())
    preprocessing = Preprocessing.from_file(site / config["preprocess"])
    image = preprocessing(load_image(site / "chelsea.jpg"))[None]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the optional rcam/target input is reported as a warning on every load
    session = ort.InferenceSession(str(site / config["model"]), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return image[0], dict(zip(names, session.run(None, {config["input"]: image})))


def test_page_preprocesses_like_python(page, python_run):
    image, _ = python_run
    assert page["input"].shape == (image.size,)
    assert np.abs(page["input"] - image.ravel()).max() == 0  # PIL's bilinear resize, bit for bit


def test_page_agrees_with_python(page, python_run):
    _, outputs = python_run
    logits = outputs["logits"][0]
    assert page["top1"] == int(logits.argmax()) == page["explained"] == int(outputs["rcam/class"][0])
    assert [entry["class"] for entry in page["top5"]] == list(np.argsort(-logits)[:5])
    assert set(page["maps"]) == {f"rcam/{layer}/map" for layer in LAYERS}
    for name, values in page["maps"].items():
        ours = np.array(values, dtype=np.float32).reshape(outputs[name].shape[-2:])
        difference = np.abs(ours - outputs[name][0]).max()
        print(f"{name}: max abs difference {difference:.2e}")
        assert difference < 1e-3, name
    print(f"page: model loaded and explained in {page['page_seconds']:.1f} s (model run {page['seconds']:.2f} s)")
    assert page["screenshot"][:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RCAM_UPDATE_SCREENSHOT") == "1":  # the README's picture, refreshed on request only
        SCREENSHOT.write_bytes(page["screenshot"])


@needs_assets
def test_write_site(tmp_path):
    page = write_site(onnx_rcam.default_model_path(), tmp_path / "site")
    folder = page.parent
    config = json.loads((folder / "site.json").read_text())
    assert config["model"] == "efficientnet_lite0.rcam.onnx" and config["layout"] == "NCHW"
    for name in ("index.html", "app.js", "labels.txt", config["preprocess"], config["model"],
                 "ort/ort.wasm.min.js", "ort/ort-wasm-simd-threaded.wasm", "ort/ort-wasm-simd-threaded.mjs"):
        assert (folder / name).is_file(), name
    assert (folder / "labels.txt").read_text().splitlines()[282] == "tiger cat"
    assert json.loads((folder / config["preprocess"]).read_text())["resize_shorter"] == 256  # the model's sidecar
    with pytest.raises(RcamError, match="holds files"):
        write_site(onnx_rcam.default_model_path(), folder)


@needs_assets
def test_write_site_preset_and_augmented(tmp_path):
    augmented = tmp_path / "plain.rcam.onnx"
    onnx.save(onnx_rcam.augment(onnx_rcam.default_model_path(), layers=["_blocks.10"]), str(augmented))
    folder = write_site(augmented, tmp_path / "site", preprocess="imagenet-squash").parent
    config = json.loads((folder / "site.json").read_text())
    settings = json.loads((folder / config["preprocess"]).read_text())
    assert settings["resize"] == "squash" and settings["size"] == [224, 224]
    assert config["model"] == "plain.rcam.onnx"
    assert assets_folder().is_dir()


PREPROCESSINGS = {  # name: the sidecar settings, as Preprocessing.from_file reads them
    "crop": {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "crop-wide": {"size": [192, 288], "resize_shorter": 200},
    "squash": {"size": [224, 256], "resize": "squash", "mean": [0.5] * 3, "std": [0.5] * 3},
    "letterbox": {"size": [320, 320], "resize": "letterbox"},
    "letterbox-tall": {"size": [256, 128], "resize": "letterbox"},
    "caffe": {"size": 227, "channels": "BGR", "pixel_range": 255, "mean": [103.939, 116.779, 123.68]},
}


@pytest.mark.parametrize("photo", ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "sideways.jpg",
                                   "coffee.png"])
@pytest.mark.parametrize("name", list(PREPROCESSINGS))
def test_preprocessing_in_the_page(browser, page, site, tmp_path, name, photo):
    """app.js's decode, placed and normalised, called in the page, make Preprocessing's input, and its cropBox is
    Preprocessing.crop_box. Bit for bit where PIL runs its horizontal pass first, as app.js always does; Pillow 13
    runs the vertical pass first for some resizes where the height shrinks proportionally more than the width
    (the sideways photo here), and the 8-bit rounding between the passes then moves pixels by one grey level."""
    devtools, _ = browser
    settings = PREPROCESSINGS[name]
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    preprocessing = Preprocessing.from_file(tmp_path / "settings.json")
    picture = load_image(site / photo)
    expected = np.asarray(preprocessing.placed(picture))
    found = devtools.evaluate(f"""(async () => {{
        const photo = await decode(await (await fetch({json.dumps(photo)})).blob());
        const pre = settingsFrom({json.dumps(settings)}, "NCHW");
        const picture = placed(pre, photo);
        return {{placed: Array.from(picture.data), input: Array.from(normalised(pre, picture)),
                 width: photo.width, height: photo.height, box: cropBox(pre, photo.width, photo.height)}};
    }})()""")
    assert (found["width"], found["height"]) == picture.size
    ours = np.array(found["placed"], dtype=np.uint8).reshape(expected.shape)
    levels = np.abs(ours.astype(int) - expected).max()
    print(f"{name} {photo}: max {levels} grey levels, {(ours != expected).mean():.1%} of values differ")
    assert levels <= 1
    # normalised: the same float32 arithmetic as Preprocessing._normalised, on the page's own pixels
    assert np.array_equal(np.array(found["input"], dtype=np.float32),
                          preprocessing._normalised(Image.fromarray(ours)).ravel())
    if photo != "sideways.jpg":
        assert levels == 0
    assert np.allclose(found["box"], preprocessing.crop_box(*picture.size), rtol=0, atol=1e-9)
