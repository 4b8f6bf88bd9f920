"""The explanation web page: its HTTP answers on a tiny run, then the real page in headless Chromium."""
import base64
import io
import json
import os
import select
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jax
import pytest
from PIL import Image

from cnnjax import pretrained
from cnnjax.apps import report, serve
from cnnjax.explain import cam, registry
from cnnjax.train import loop
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# A fresh headless Chromium on a machine without internet: anything that phones home would hang.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def tiny_run(image_folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "simple_cnn"
  loop.train_and_evaluate(tiny_config(image_folder, num_epochs=1), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def tiny_source(tiny_run):
  return report.load_workdir(str(tiny_run))


@pytest.fixture(scope="module")
def server_url(tiny_source, image_folder):
  photos = [str(image_folder / "red" / "0.png"), str(image_folder / "green" / "0.png")]
  server = serve.make_server(tiny_source, photos, port=0, title="tiny run")
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}/"
  server.shutdown()
  server.server_close()


def get(url):
  with urllib.request.urlopen(url, timeout=60) as response:
    return response.status, response.headers["Content-Type"], response.read()


def explain(url, body=b"", **query):
  """(status, JSON answer) of POST /api/explain."""
  request = urllib.request.Request(f"{url}api/explain?{urllib.parse.urlencode(query)}", data=body, method="POST")
  try:
    with urllib.request.urlopen(request, timeout=300) as response:
      return response.status, json.load(response)
  except urllib.error.HTTPError as error:
    return error.code, json.load(error)


def decoded(data_url: str) -> Image.Image:
  prefix = "data:image/png;base64,"
  assert data_url.startswith(prefix)
  return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):])))


def test_page_and_info(server_url):
  status, content_type, page = get(server_url)
  assert status == 200 and content_type.startswith("text/html")
  assert b'id="layer"' in page and b'id="upload"' in page
  assert b"http://" not in page and b"https://" not in page  # no CDN: the page must work offline
  status, content_type, body = get(server_url + "api/info")
  info = json.loads(body)
  assert content_type == "application/json"
  assert info["classes"] == ["blue", "green", "red"] and info["photos"] == ["0.png", "0.png"]
  assert info["default_layer"] in info["layers"] and info["max_upload_bytes"] == 10 * 2**20
  # Every explainer of the registry is offered, the cheap keras-vis set ticked.
  assert [method["name"] for method in info["methods"]] == list(registry.METHODS)
  assert info["default_methods"] == list(serve.DEFAULT_METHODS)


def test_explains_with_the_methods_asked_for(server_url):
  status, answer = explain(server_url, photo="0", methods="occlusion,eigencam,input_x_gradient")
  assert status == 200, answer
  assert [panel["method"] for panel in answer["panels"]] == ["occlusion", "eigencam", "input_x_gradient"]
  assert all(decoded(panel["image"]).size == (16, 16) for panel in answer["panels"])


def test_explains_a_photo_and_an_upload(server_url, image_folder):
  status, answer = explain(server_url, photo="0", target="top1")
  assert status == 200, answer
  assert [panel["method"] for panel in answer["panels"]] == list(serve.DEFAULT_METHODS)
  for panel in answer["panels"]:
    assert decoded(panel["image"]).size == (16, 16)
  assert decoded(answer["input"]).size == (16, 16)
  assert len(answer["top5"]) == 3 and abs(sum(p["probability"] for p in answer["top5"]) - 1) < 1e-4
  assert answer["target"]["name"] == answer["top5"][0]["name"]  # top1: the most probable class

  compiled = cam._cam._cache_size()
  upload = (image_folder / "blue" / "3.png").read_bytes()
  status, answer = explain(server_url, upload, name="3.png", target="1", layer=answer["layer"])
  assert status == 200, answer
  assert answer["target"] == {"index": 1, "name": "green"}
  assert cam._cam._cache_size() == compiled  # same layer and shape: the jitted Grad-CAM is reused

  info = json.loads(get(server_url + "api/info")[2])
  other_layer = next(name for name in info["layers"] if name != info["default_layer"])
  status, answer = explain(server_url, upload, name="3.png", target="red", layer=other_layer)
  assert status == 200 and answer["layer"] == other_layer and answer["target"]["name"] == "red"


def bomb() -> bytes:
  """A PNG of a few kilobytes that decodes to 64 megapixels."""
  buffer = io.BytesIO()
  Image.new("1", (8000, 8000)).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.mark.parametrize("body, query, status, message", [
    (b"just some text", {"name": "notes.txt"}, 400, "cannot decode 'notes.txt' as an image"),
    (b"\0" * (10 * 2**20 + 1), {"name": "huge.jpg"}, 413, "the limit is 10 MB"),
    (bomb, {"name": "bomb.png"}, 413, "8000x8000 pixels; the limit is 50 megapixels"),
    (b"", {}, 400, "no image"),
    (b"", {"photo": "7"}, 400, "no photo '7'"),
    (b"", {"photo": "0", "layer": "dense_1"}, 400, "unknown layer 'dense_1'"),
    (b"", {"photo": "0", "target": "zebra"}, 400, "unknown target class 'zebra'"),
    (b"", {"photo": "0", "methods": "gradcam,lime"}, 400, "unknown method 'lime'"),
])
def test_rejects_bad_requests_with_one_line(server_url, body, query, status, message):
  got_status, answer = explain(server_url, body() if callable(body) else body, **query)
  assert got_status == status and message in answer["error"] and "\n" not in answer["error"]


def test_unknown_paths_are_404(server_url):
  with pytest.raises(urllib.error.HTTPError) as error:
    get(server_url + "nothing")
  assert error.value.code == 404


def test_offered_photos_must_exist(tiny_source, tmp_path):
  with pytest.raises(ValueError, match="nope.jpg' does not exist"):
    serve.make_server(tiny_source, [str(tmp_path / "nope.jpg")])


def test_decode_image_checks_the_size_before_decoding(tmp_path):
  path = tmp_path / "wide.png"
  Image.new("RGB", (300, 200), "red").save(path)
  with pytest.raises(report.ImageTooLargeError, match="300x200 pixels"):
    report.decode_image(str(path), 16, 3, "'wide.png'", max_pixels=50_000)
  assert report.decode_image(str(path), 16, 3, "'wide.png'").shape == (16, 16, 3)


def playwright_or_skip():
  """Playwright's sync API with Chromium there; else a skip, or in CI (whose .ci/run installs both) a failure."""
  missing = None
  if not Path(CHROMIUM).is_file():
    missing = f"{CHROMIUM} is not installed (apt-get install chromium); in CI, .ci/run installs it"
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    missing = "playwright is not installed (pip install -r requirements-dev.txt)"
  if missing:
    (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
  return sync_playwright


def start_cli_server(weights: Path, log: Path):
  """`explain.py --serve --weights FILE --port 0` in a subprocess (stderr into `log`), and the address it prints."""
  # The tests' compilation cache (conftest.py): a rerun skips most of compiling MobileNet's explainers.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  with open(log, "w") as stderr:
    process = subprocess.Popen([sys.executable, "explain.py", "--serve", "--weights", str(weights), "--port", "0"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
  ready, _, _ = select.select([process.stdout], [], [], 120)
  line = process.stdout.readline().strip() if ready else ""
  if not line.startswith("http://127.0.0.1:"):
    process.kill()
    process.wait()
    pytest.fail(f"explain.py --serve printed {line!r}; stderr: {log.read_text()[-2000:]}")
  return process, line


def test_page_in_headless_chromium(shared_dir, tmp_path):
  sync_playwright = playwright_or_skip()
  tiger_cat = pretrained.imagenet_class_names().index("tiger cat")
  process, url = start_cli_server(shared_dir / "weights" / "mobilenet" / "mobilenet_2_5_224_tf.h5",
                                  tmp_path / "server.log")
  try:
    with sync_playwright() as playwright:
      # launch() gives each browser a fresh temporary profile (user data dir).
      browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
      page = browser.new_page(viewport={"width": 1280, "height": 720})
      page.goto(url)
      page.wait_for_function("document.querySelectorAll('#layer option').length > 0")

      page.set_input_files("#upload", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                              "buffer": b"not an image"}])
      page.wait_for_selector("#status.error")
      assert "cannot decode 'notes.txt' as an image" in page.text_content("#status")

      page.set_input_files("#upload", str(shared_dir / "data" / "photos" / "both.png"))
      page.wait_for_selector("#results:not([hidden])", timeout=180_000)  # the first answer compiles
      page.select_option("#target", value=str(tiger_cat))
      page.wait_for_function("document.getElementById('status').textContent.includes('Class: tiger cat;')")
      page.wait_for_function("[...document.querySelectorAll('#input, #panels img')]"
                             ".every(image => image.complete && image.naturalWidth > 0)")
      shown = page.eval_on_selector_all("#panels img", "images => images.map(i => [i.dataset.method, i.naturalWidth])")
      assert shown == [[method, 224] for method in serve.DEFAULT_METHODS]
      page.check("#methods input[value='layercam']")  # one more method: the page asks for it at once
      page.wait_for_function("document.querySelectorAll('#panels img').length === 5")
      shown = page.eval_on_selector_all("#panels img", "images => images.map(i => i.dataset.method)")
      assert shown == [*serve.DEFAULT_METHODS, "layercam"]
      assert len(page.query_selector_all("#top5 li")) == 5
      browser.close()
  finally:
    process.terminate()
    process.wait(timeout=30)
