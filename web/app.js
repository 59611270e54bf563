// onnx-rcam viewer: runs an augmented model (onnx-rcam augment) with onnxruntime-web's WASM backend and draws its
// Relevance-CAM maps over the photo. Preprocessing follows onnx_rcam.images.Preprocessing, pixel for pixel: the
// resize is PIL's BILINEAR (a triangle filter widened by the scale when shrinking, 8-bit fixed point, horizontal
// pass then vertical), so the input tensor equals the Python one for the same decoded photo.
"use strict";

const INFERNO = "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a07220b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b09643d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711ff1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0af98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0ffcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"; // onnx_rcam.overlay's colormap, 256 RGB entries
const ALPHA = 0.8; // as onnx_rcam.overlay: each pixel's colour weighs ALPHA * map value
const CROP_FRACTION = 0.875;
const LETTERBOX_GRAY = 114;

const $ = (id) => document.getElementById(id);
const state = { session: null, pre: null, labels: null, site: null, inputName: "input", layout: "NCHW" };

// Python's round(): halves go to the even neighbour.
function pyRound(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// ---- preprocessing (onnx_rcam.images.Preprocessing) ----

function settingsFrom(json, layout) {
  const size = typeof json.size === "number" ? [json.size, json.size] : json.size; // [height, width]
  return {
    size,
    resizeShorter: json.resize_shorter ?? pyRound(Math.min(...size) / CROP_FRACTION),
    mean: json.mean ?? [0, 0, 0],
    std: json.std ?? [1, 1, 1],
    layout,
    resize: json.resize ?? "crop",
    channels: json.channels ?? "RGB",
    pixelRange: json.pixel_range ?? 1,
  };
}

// PIL's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter, support 1.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale;
  const bounds = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const weights = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) / filterscale);
      const w = t < 1 ? 1 - t : 0;
      weights.push(w);
      total += w;
    }
    const fixed = weights.map((w) => {
      const v = total !== 0 ? w / total : w;
      return Math.trunc(v < 0 ? -0.5 + v * 4194304 : 0.5 + v * 4194304); // 1 << PRECISION_BITS (22)
    });
    bounds.push([xmin, fixed]);
  }
  return bounds;
}

function clip8(sum) {
  const v = Math.floor(sum / 4194304);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// An RGB picture {width, height, data: Uint8Array of 3 bytes per pixel} resized as PIL's Image.resize(BILINEAR).
function resize(picture, width, height) {
  let current = picture;
  if (width !== current.width) {
    const taps = coefficients(current.width, width);
    const out = new Uint8Array(width * current.height * 3);
    for (let y = 0; y < current.height; y++) {
      const row = y * current.width * 3;
      for (let x = 0; x < width; x++) {
        const [xmin, k] = taps[x];
        for (let c = 0; c < 3; c++) {
          let sum = 2097152; // 1 << (PRECISION_BITS - 1)
          for (let i = 0; i < k.length; i++) sum += current.data[row + (xmin + i) * 3 + c] * k[i];
          out[(y * width + x) * 3 + c] = clip8(sum);
        }
      }
    }
    current = { width, height: current.height, data: out };
  }
  if (height !== current.height) {
    const taps = coefficients(current.height, height);
    const out = new Uint8Array(current.width * height * 3);
    const stride = current.width * 3;
    for (let y = 0; y < height; y++) {
      const [ymin, k] = taps[y];
      for (let x = 0; x < stride; x++) {
        let sum = 2097152;
        for (let i = 0; i < k.length; i++) sum += current.data[(ymin + i) * stride + x] * k[i];
        out[y * stride + x] = clip8(sum);
      }
    }
    current = { width: current.width, height, data: out };
  }
  return current;
}

function crop(picture, left, top, width, height) {
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const start = ((top + y) * picture.width + left) * 3;
    out.set(picture.data.subarray(start, start + width * 3), y * width * 3);
  }
  return { width, height, data: out };
}

function fit(pre, width, height) {
  const scale = Math.min(pre.size[0] / height, pre.size[1] / width);
  const w = pyRound(width * scale), h = pyRound(height * scale);
  return { scale, w, h, left: Math.floor((pre.size[1] - w) / 2), top: Math.floor((pre.size[0] - h) / 2) };
}

// Preprocessing.placed: the picture where the model input has it, at the input's size.
function placed(pre, photo) {
  const [height, width] = pre.size;
  if (pre.resize === "squash") return resize(photo, width, height);
  if (pre.resize === "letterbox") {
    const f = fit(pre, photo.width, photo.height);
    const small = resize(photo, f.w, f.h);
    const canvas = { width, height, data: new Uint8Array(width * height * 3).fill(LETTERBOX_GRAY) };
    for (let y = 0; y < f.h; y++) {
      const ty = y + f.top;
      if (ty < 0 || ty >= height) continue;
      for (let x = 0; x < f.w; x++) {
        const tx = x + f.left;
        if (tx < 0 || tx >= width) continue;
        for (let c = 0; c < 3; c++) canvas.data[(ty * width + tx) * 3 + c] = small.data[(y * f.w + x) * 3 + c];
      }
    }
    return canvas;
  }
  const scale = pre.resizeShorter / Math.min(photo.width, photo.height);
  let resized = resize(photo, pyRound(photo.width * scale), pyRound(photo.height * scale));
  if (resized.width < width || resized.height < height) {  // a very elongated photo: fill the crop instead
    resized = resize(photo, Math.max(width, resized.width), Math.max(height, resized.height));
  }
  return crop(resized, Math.floor((resized.width - width) / 2), Math.floor((resized.height - height) / 2),
              width, height);
}

// Preprocessing._normalised, in float32 arithmetic as numpy does it.
function normalised(pre, picture) {
  const f = Math.fround;
  const divisor = f(255 / pre.pixelRange);
  const mean = pre.mean.map(f), std = pre.std.map(f);
  const n = picture.width * picture.height;
  const out = new Float32Array(n * 3);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      const source = pre.channels === "BGR" ? 2 - c : c;
      const v = f(f(f(picture.data[p * 3 + source] / divisor) - mean[c]) / std[c]);
      out[pre.layout === "NCHW" ? c * n + p : p * 3 + c] = v;
    }
  }
  return out;
}

// The region of the photo (its own pixels) that the model input covers: Preprocessing.crop_box.
function cropBox(pre, width, height) {
  if (pre.resize === "squash") return [0, 0, width, height];
  if (pre.resize === "letterbox") {
    const f = fit(pre, width, height);
    return [-f.left / f.scale, -f.top / f.scale, (pre.size[1] - f.left) / f.scale, (pre.size[0] - f.top) / f.scale];
  }
  const scale = pre.resizeShorter / Math.min(width, height);
  const w = pyRound(width * scale), h = pyRound(height * scale);
  const left = Math.floor((w - pre.size[1]) / 2), top = Math.floor((h - pre.size[0]) / 2);
  return [left / scale, top / scale, (left + pre.size[1]) / scale, (top + pre.size[0]) / scale];
}

// ---- photos ----

async function decode(blob) {
  // No colour management and EXIF orientation applied: the pixels PIL's load_image reads.
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none",
                                                 imageOrientation: "from-image" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let p = 0, q = 0; p < rgba.length; p += 4, q += 3) {
    rgb[q] = rgba[p]; rgb[q + 1] = rgba[p + 1]; rgb[q + 2] = rgba[p + 2];
  }
  return { width: bitmap.width, height: bitmap.height, data: rgb, bitmap };
}

// ---- drawing ----

function heatCanvas(map, height, width) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let p = 0; p < width * height; p++) {
    const level = Math.min(1, Math.max(0, Number.isFinite(map[p]) ? map[p] : 0));
    const index = Math.round(level * 255);
    for (let c = 0; c < 3; c++) image.data[p * 4 + c] = parseInt(INFERNO.substr((index * 3 + c) * 2, 2), 16);
    image.data[p * 4 + 3] = Math.round(ALPHA * level * 255);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function overlay(photo, map, pre, displayWidth) {
  const [mapH, mapW] = pre.size;
  const scale = Math.min(1, displayWidth / photo.width);
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(photo.width * scale);
  canvas.height = Math.round(photo.height * scale);
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(photo.bitmap, 0, 0, canvas.width, canvas.height);
  const heat = heatCanvas(map, mapH, mapW);
  if (pre.resize === "letterbox") {  // the map's window that shows the photo, over the whole photo
    const f = fit(pre, photo.width, photo.height);
    context.drawImage(heat, f.left, f.top, f.w, f.h, 0, 0, canvas.width, canvas.height);
    return canvas;
  }
  const [x1, y1, x2, y2] = cropBox(pre, photo.width, photo.height).map((v) => v * scale);
  if (pre.resize === "crop") {  // dim what the model never saw
    context.fillStyle = "rgba(0, 0, 0, 0.6)";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(photo.bitmap, x1 / scale, y1 / scale, (x2 - x1) / scale, (y2 - y1) / scale,
                      x1, y1, x2 - x1, y2 - y1);
  }
  context.drawImage(heat, 0, 0, mapW, mapH, x1, y1, x2 - x1, y2 - y1);
  return canvas;
}

// ---- the model ----

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function fetchText(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return response.text();
}

async function loadModel(bytes, sidecar) {
  status("Loading the model…");
  ort.env.wasm.numThreads = 1;  // a static server sends no cross-origin isolation headers: one thread
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  state.session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const names = state.session.inputNames;
  state.inputName = names.includes(state.site?.input) ? state.site.input : names.find((n) => !n.startsWith("rcam/"));
  const meta = state.session.inputMetadata?.find?.((m) => m.name === state.inputName);
  const shape = meta?.shape ?? state.site?.input_shape;
  state.layout = shape && shape.length === 4 && ![1, 3].includes(shape[1]) && [1, 3].includes(shape[3])
    ? "NHWC" : "NCHW";
  state.pre = settingsFrom(sidecar, state.layout);
  state.layers = state.session.outputNames.filter((n) => n.endsWith("/map"));
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function softmax(logits) {
  const top = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

function label(index) {
  return state.labels && state.labels[index] !== undefined ? state.labels[index] : `class ${index}`;
}

async function explain(blob, name) {
  if (!state.session) throw new Error("no model loaded");
  status(`Explaining ${name}…`);
  const photo = await decode(blob);
  const pre = state.pre;
  const input = normalised(pre, placed(pre, photo));
  const dims = pre.layout === "NCHW" ? [1, 3, ...pre.size] : [1, ...pre.size, 3];
  const started = performance.now();
  const fetches = ["logits", "rcam/class", ...state.layers].filter((n) => state.session.outputNames.includes(n));
  const logitsName = state.session.outputNames[0];
  if (!fetches.includes(logitsName)) fetches.unshift(logitsName);
  const out = await state.session.run({ [state.inputName]: new ort.Tensor("float32", input, dims) }, fetches);
  const seconds = (performance.now() - started) / 1000;
  const logits = out[logitsName].data;
  const probabilities = softmax(logits);
  const order = Array.from(probabilities.keys()).sort((a, b) => probabilities[b] - probabilities[a]).slice(0, 5);
  const explained = out["rcam/class"] ? Number(out["rcam/class"].data[0]) : order[0];

  $("top").innerHTML = "<tr><th>class</th><th>label</th><th>softmax</th><th></th></tr>" + order.map((i) =>
    `<tr><td>${i}</td><td>${label(i)}</td><td>${probabilities[i].toFixed(3)}</td>` +
    `<td><div class="bar" style="width:${Math.round(probabilities[i] * 200)}px"></div></td></tr>`).join("");
  const panels = $("panels");
  panels.innerHTML = "";
  const maps = {};
  for (const name of state.layers) {
    const tensor = out[name];
    const [h, w] = tensor.dims.slice(-2);
    const map = tensor.data.subarray(0, h * w);  // the first (explained) class of the one image
    maps[name] = Array.from(map, (v) => Math.round(v * 1e6) / 1e6);
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    const parts = name.split("/");  // METHOD/LAYER/map
    caption.textContent = `${parts[0]} ${parts.slice(1, -1).join("/")}: ${label(explained).split(",")[0]}`;
    figure.append(caption, overlay(photo, map, pre, 360));
    panels.append(figure);
  }
  window.rcamInput = input;
  const result = { status: "done", photo: name, width: photo.width, height: photo.height, seconds,
                   top5: order.map((i) => ({ class: i, label: label(i), score: probabilities[i] })),
                   top1: order[0], explained, map_shape: [pre.size[0], pre.size[1]], maps };
  window.rcamResult = result;
  $("result").textContent = JSON.stringify(result);
  status(`${name}: ${label(order[0])} (model run ${seconds.toFixed(2)} s in WebAssembly)`);
  return result;
}

function fail(error) {
  console.error(error);
  status(String(error.message ?? error), true);
  $("result").textContent = JSON.stringify({ status: "error", error: String(error.message ?? error) });
}

async function start() {
  try {
    state.site = JSON.parse(await fetchText("site.json"));
    state.inputName = state.site.input ?? "input";
    const [bytes, sidecar, labels] = await Promise.all([
      fetchBytes(state.site.model), fetchText(state.site.preprocess).then(JSON.parse),
      state.site.labels ? fetchText(state.site.labels) : Promise.resolve(null)]);
    state.labels = labels ? labels.replace(/\r/g, "").replace(/\n$/, "").split("\n") : null;
    await loadModel(bytes, sidecar);
    status("Ready: choose or drop a photo.");
    const photo = new URLSearchParams(location.search).get("photo");
    if (photo) {
      const response = await fetch(photo);
      if (!response.ok) throw new Error(`${photo}: ${response.status}`);
      await explain(await response.blob(), photo.split("/").pop());
    }
  } catch (error) {
    fail(error);
  }
}

$("photo").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) explain(file, file.name).catch(fail);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) explain(file, file.name).catch(fail);
});
// Another augmented model and its sidecar, both from disk: the model is read once both are chosen.
async function pickModel() {
  const model = $("model").files[0], sidecar = $("sidecar").files[0];
  if (!model || !sidecar) return status("Choose the model's .preprocess.json too.");
  try {
    await loadModel(new Uint8Array(await model.arrayBuffer()), JSON.parse(await sidecar.text()));
    status(`Ready: ${model.name}. Choose or drop a photo.`);
  } catch (error) {
    fail(error);
  }
}
$("model").addEventListener("change", pickModel);
$("sidecar").addEventListener("change", pickModel);

start();
