"""The explanation web page of `python explain.py --serve`: pick or upload a photo, see the top-5 predictions and
any of the registry's explainers (saliency, guided backprop, Grad-CAM, guided Grad-CAM by default) for any class
at any feature layer.

Standard library only (`http.server`). The model is loaded once; a request runs one jitted forward pass and one
jitted batched call per method (`report.explanation_maps`), which compile once per layer and are then reused
(those of the default layer compile while the page is opened).
Requests are served on threads but computed one at a time: XLA already spreads one call over every core.

  GET  /              the page (one HTML file, no external resources: it works offline)
  GET  /api/info      {"title", "classes", "layers", "default_layer", "photos", "max_upload_bytes", "methods",
                      "default_methods"}
  POST /api/explain   ?target=top1|INDEX&layer=NAME&methods=NAME,NAME and either &photo=INDEX (one of "photos") or the image file
                      as the body (&name=FILE for messages) -> {"input", "top5", "target", "layer", "panels"};
                      a bad request gets a 4xx and {"error": "one line"}.
"""
import base64
import functools
import http
import http.server
import io
import json
import threading
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from cnnjax import data as data_lib
from cnnjax import viz
from cnnjax.apps import report
from cnnjax.explain import features, registry
from cnnjax.pretrained import preprocessing as pretrained_preprocessing

# Shown until the page asks for others: the keras-vis set, each about one forward pass or one backward (the
# perturbation methods and Score-CAM cost hundreds of forwards and are a click away).
DEFAULT_METHODS = ("saliency", "guided", "gradcam", "guided_gradcam")
MAX_UPLOAD_BYTES = 10 * 2**20
# 10 MB of JPEG rarely holds more; 50 megapixels decode to 150 MB of RGB, more would be a decompression bomb.
MAX_PIXELS = 50_000_000
# Oversized bodies are still read (and dropped) up to this size, so the browser sees the 413 rather than a reset
# connection; anything larger is cut off.
_MAX_DRAINED_BYTES = 100 * 2**20
_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class RequestError(ValueError):
  """A request the page can fix: answered with `status` and the message."""

  def __init__(self, message: str, status: http.HTTPStatus = http.HTTPStatus.BAD_REQUEST):
    super().__init__(message)
    self.status = status


def default_photos() -> List[str]:
  """The photos in shared/data/photos, when that folder is there."""
  folder = pretrained_preprocessing.shared_dir() / "data" / "photos"
  if not folder.is_dir():
    return []
  return sorted(str(path) for path in folder.iterdir() if path.suffix.lower() in _PHOTO_SUFFIXES)


def cam_layers(source: report.ModelSource) -> Tuple[List[str], str]:
  """(layers with a (B, H, W, C) output, which Grad-CAM can use; Grad-CAM's default layer)."""
  infos = features.layer_infos(source.model, (source.image_size, source.image_size, source.channels))
  return [info.name for info in infos if len(info.shape) == 4], features.default_cam_layer(infos).name


@functools.partial(jax.jit, static_argnames="model")
def _logits(model, variables, inputs):
  return features.apply_logits(features.unwrap_model(model), variables, inputs)


def predict(source: report.ModelSource, images: np.ndarray) -> Tuple[jax.Array, np.ndarray]:
  """(preprocessed inputs, logits) for uint8 (N, S, S, C) images."""
  inputs = data_lib.preprocess(jnp.asarray(images, jnp.float32), **source.preprocess)
  return inputs, np.asarray(_logits(features.static_model(source.model), source.variables, inputs))


def explain_image(source: report.ModelSource, image: np.ndarray, target: str, layer: str,
                  methods: Sequence[str] = DEFAULT_METHODS) -> Dict:
  """Predictions and each method's map for one uint8 (S, S, C) image: {"top5", "target", "maps"}."""
  inputs, logits = predict(source, image[None])
  targets = report.resolve_target(target, logits, source.class_names)
  maps = report.explanation_maps(source.model, source.variables, inputs, jnp.asarray(targets), methods, layer)
  return {"top5": report.top_predictions(logits, source.class_names)[0], "target": int(targets[0]),
          "maps": {name: values[0] for name, values in maps.items()}}


def png_data_url(pixels: np.ndarray) -> str:
  """A (H, W, 3) float image in [0, 1] or a uint8 (H, W, C) image as an inline PNG."""
  if pixels.dtype != np.uint8:
    pixels = np.uint8(np.round(np.clip(pixels, 0, 1) * 255))
  buffer = io.BytesIO()
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render(source: report.ModelSource, image: np.ndarray, explained: Dict, layer: str) -> Dict:
  """The JSON answer: the model's view of the image, top-5, target and one PNG per method (as explain.py draws)."""
  return {
      "input": png_data_url(image),
      "top5": [{"name": name, "probability": probability} for name, probability in explained["top5"]],
      "target": {"index": explained["target"], "name": source.class_names[explained["target"]]},
      "layer": layer,
      "panels": [{"method": name, "title": viz.PANEL_TITLES[name],
                  "image": png_data_url(viz.panel_array(image, name, explained["maps"][name]))}
                 for name in explained["maps"]],
  }


class ExplanationServer(http.server.ThreadingHTTPServer):
  """The HTTP server and what its requests share: the loaded model, the offered photos and the compute lock."""

  def __init__(self, address: Tuple[str, int], source: report.ModelSource, photos: Sequence[str], title: str):
    missing = [path for path in photos if not Path(path).is_file()]
    if missing:
      raise ValueError(f"image {missing[0]!r} does not exist")
    super().__init__(address, _Handler)
    self.source = source
    self.photos = list(photos)
    self.layers, self.default_layer = cam_layers(source)
    self.info = {"title": title, "classes": list(source.class_names), "layers": self.layers,
                 "default_layer": self.default_layer, "photos": [Path(path).name for path in self.photos],
                 "max_upload_bytes": MAX_UPLOAD_BYTES, "default_methods": list(DEFAULT_METHODS),
                 "methods": [{"name": m.name, "title": m.title, "paper": m.paper}
                             for m in registry.METHODS.values()]}
    self.compute_lock = threading.Lock()

  def explain(self, query: Dict[str, str], body: Optional[bytes]) -> Dict:
    """The /api/explain answer for a parsed query string and the uploaded file (None when a photo is picked)."""
    layer = query.get("layer") or self.default_layer
    if layer not in self.layers:
      raise RequestError(f"unknown layer {layer!r}; choose a layer with a spatial feature map")
    methods = [name for name in query.get("methods", ",".join(DEFAULT_METHODS)).split(",") if name]
    try:
      methods = list(registry.parse(methods)) or list(DEFAULT_METHODS)
    except ValueError as error:
      raise RequestError(str(error)) from None
    size, channels = self.source.image_size, self.source.channels
    try:
      if body is None:
        path = self._photo(query.get("photo", ""))
        image = report.decode_image(path, size, channels, repr(Path(path).name), MAX_PIXELS)
      else:
        name = repr(query.get("name", "upload"))
        image = report.decode_image(io.BytesIO(body), size, channels, name, MAX_PIXELS)
    except report.ImageTooLargeError as error:
      raise RequestError(str(error), http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    with self.compute_lock:
      explained = explain_image(self.source, image, query.get("target", "top1"), layer, methods)
    return render(self.source, image, explained, layer)

  def warm_up(self):
    """Compiles the forward pass and the explainers at the default layer, so the first real request is quick."""
    blank = np.zeros((self.source.image_size, self.source.image_size, self.source.channels), np.uint8)
    with self.compute_lock:
      explain_image(self.source, blank, "top1", self.default_layer)

  def _photo(self, index: str) -> str:
    if not index.isdigit() or int(index) >= len(self.photos):
      raise RequestError(f"no photo {index!r}: pick one of the {len(self.photos)} offered, or upload an image")
    return self.photos[int(index)]


class _Handler(http.server.BaseHTTPRequestHandler):
  server: ExplanationServer

  def do_GET(self):
    path = urllib.parse.urlsplit(self.path).path
    if path == "/":
      self._send(http.HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
    elif path == "/api/info":
      self._send_json(http.HTTPStatus.OK, self.server.info)
    else:
      self._send_json(http.HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

  def do_POST(self):
    url = urllib.parse.urlsplit(self.path)
    if url.path != "/api/explain":
      self._send_json(http.HTTPStatus.NOT_FOUND, {"error": f"no page {url.path}"})
      return
    try:
      query = dict(urllib.parse.parse_qsl(url.query))
      body = self._read_upload() if "photo" not in query else None
      self._send_json(http.HTTPStatus.OK, self.server.explain(query, body))
    except RequestError as error:
      self._send_json(error.status, {"error": str(error)})
    except ValueError as error:  # the explainers' one-line messages: bad target, layer or image
      self._send_json(http.HTTPStatus.BAD_REQUEST, {"error": str(error)})
    except Exception as error:  # noqa: BLE001  (the page must get an answer, whatever failed)
      logging.exception("explaining failed")
      self._send_json(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                      {"error": f"internal error ({type(error).__name__}); the server's log has the details"})

  def _read_upload(self) -> bytes:
    length = int(self.headers.get("Content-Length") or 0)
    if length == 0:
      raise RequestError("no image: upload an image file or pick a photo")
    if length > MAX_UPLOAD_BYTES:
      self._discard_body(length)
      raise RequestError(f"the upload is {length / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:g} MB",
                         http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    return self.rfile.read(length)

  def _discard_body(self, length: int):
    """Reads and drops a body: closing a socket with unread data resets it, and the browser would lose the 413."""
    if length > _MAX_DRAINED_BYTES:
      return  # not worth reading: that client gets a reset connection
    while length > 0:
      chunk = self.rfile.read(min(length, 2**20))
      if not chunk:
        break
      length -= len(chunk)

  def _send_json(self, status: http.HTTPStatus, payload: Dict):
    self._send(status, json.dumps(payload).encode(), "application/json")

  def _send(self, status: http.HTTPStatus, content: bytes, content_type: str):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(content)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(content)

  def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
    logging.info("%s " + format, self.address_string(), *args)


def make_server(source: report.ModelSource, photos: Sequence[str], host: str = "127.0.0.1", port: int = 0,
                title: str = "") -> ExplanationServer:
  """The server bound to (host, port) (port 0: any free port, see `server_address`), not yet serving."""
  return ExplanationServer((host, port), source, photos, title)


def serve(source: report.ModelSource, photos: Sequence[str], host: str, port: int, title: str) -> None:
  """Serves the page until interrupted, after printing its address."""
  try:
    server = make_server(source, photos, host, port, title)
  except OSError as error:  # port taken, address not on this machine, ...
    raise ValueError(f"cannot serve on {host}:{port} ({error.strerror or error})") from None
  with server:
    print(f"http://{host}:{server.server_address[1]}/", flush=True)
    # While the user opens the page and picks a photo; requests meanwhile wait on the compute lock.
    threading.Thread(target=server.warm_up, daemon=True).start()
    try:
      server.serve_forever()
    except KeyboardInterrupt:
      pass


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cnnjax: explain predictions</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  #title { color: #666; margin-bottom: 1em; }
  .controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: end; margin-bottom: 1em; }
  label { display: flex; flex-direction: column; gap: .3em; font-weight: 600; }
  select { max-width: 22em; }
  #status { min-height: 1.4em; margin-bottom: .8em; }
  #status.error { color: #b00020; font-weight: 600; }
  .results { display: flex; flex-wrap: wrap; gap: 1.2em; }
  figure { margin: 0; text-align: center; }
  figure img { width: 224px; height: 224px; image-rendering: pixelated; border: 1px solid #ccc; }
  figcaption { margin-top: .3em; }
  #top5 { margin: 0; padding-left: 1.5em; min-width: 16em; }
  #top5 li { margin-bottom: .4em; }
  .bar { height: 6px; background: #3b7dd8; border-radius: 3px; }
  fieldset { border: 1px solid #ccc; margin: 0 0 1em; display: flex; flex-wrap: wrap; gap: .2em 1em; }
  fieldset label { flex-direction: row; font-weight: normal; }
</style>
</head>
<body>
<h1>Explain a prediction</h1>
<div id="title"></div>
<div class="controls">
  <label>Photo <select id="photo"><option value="">(choose)</option></select></label>
  <label>or upload <input type="file" id="upload" accept="image/*"></label>
  <label>Class <select id="target"><option value="top1">top-1 prediction</option></select></label>
  <label>Layer (CAMs) <select id="layer"></select></label>
</div>
<fieldset id="methods"><legend>Methods</legend></fieldset>
<div id="status">Pick a photo or upload an image.</div>
<div class="results" id="results" hidden>
  <figure><img id="input" alt="input"><figcaption>input (as the model sees it)</figcaption></figure>
  <div><b>Top 5</b><ol id="top5"></ol></div>
  <div class="results" id="panels"></div>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let upload = null;  // the uploaded File, re-sent when the class or layer changes
let latest = 0;     // answers to older requests are dropped

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function addOption(select, value, text) {
  const option = document.createElement("option");
  option.value = value;
  option.textContent = text;
  select.appendChild(option);
}

async function explain() {
  const methods = [...document.querySelectorAll("#methods input:checked")].map((box) => box.value);
  const query = new URLSearchParams({target: $("target").value, layer: $("layer").value,
                                     methods: methods.join(",")});
  let body = null;
  if (upload) {
    query.set("name", upload.name);
    body = upload;
  } else if ($("photo").value !== "") {
    query.set("photo", $("photo").value);
  } else {
    return;
  }
  const request = ++latest;
  setStatus("Computing...", false);
  let answer;
  try {
    const response = await fetch("api/explain?" + query, {method: "POST", body: body});
    answer = await response.json();
  } catch (error) {
    answer = {error: "no answer from the server (" + error + ")"};
  }
  if (request !== latest) return;
  if (answer.error) {
    $("results").hidden = true;
    setStatus("Error: " + answer.error, true);
    return;
  }
  show(answer);
}

function show(answer) {
  $("input").src = answer.input;
  $("top5").replaceChildren(...answer.top5.map((p) => {
    const item = document.createElement("li");
    item.textContent = p.name + " (" + (100 * p.probability).toFixed(1) + "%)";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = Math.max(1, 100 * p.probability) + "%";
    item.appendChild(bar);
    return item;
  }));
  $("panels").replaceChildren(...answer.panels.map((panel) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = panel.image;
    image.alt = panel.title;
    image.dataset.method = panel.method;
    const caption = document.createElement("figcaption");
    caption.textContent = panel.title;
    figure.append(image, caption);
    return figure;
  }));
  $("results").hidden = false;
  setStatus("Class: " + answer.target.name + "; layer: " + answer.layer, false);
}

async function start() {
  const info = await (await fetch("api/info")).json();
  $("title").textContent = info.title;
  info.photos.forEach((name, index) => addOption($("photo"), index, name));
  info.classes.forEach((name, index) => addOption($("target"), index, index + ": " + name));
  info.layers.forEach((name) => addOption($("layer"), name, name));
  $("layer").value = info.default_layer;
  info.methods.forEach((method) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = method.name;
    box.checked = info.default_methods.includes(method.name);
    box.onchange = explain;
    label.title = method.paper;
    label.append(box, " " + method.title);
    $("methods").appendChild(label);
  });
  $("photo").onchange = () => { upload = null; $("upload").value = ""; explain(); };
  $("upload").onchange = () => { upload = $("upload").files[0] || null; $("photo").value = ""; explain(); };
  $("target").onchange = explain;
  $("layer").onchange = explain;
}
start();
</script>
</body>
</html>
"""
