"""``repsuite serve`` in a real headless Chromium (Playwright), and under load through its HTTP API.

The server runs in a subprocess on a free port with the tiny checkpoints the NLQ and face-swap fixtures train.
Screenshots go to ``$REPSUITE_SCREENSHOTS`` when set (the README's come from here), else the test's folder.
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import PYTHON, subprocess_env

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("REPSUITE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.slow]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint, tiny_ckpt, tmp_path_factory):
    """``repsuite serve`` with both tabs; yields (url, workdir)."""
    work = tmp_path_factory.mktemp("serve")
    port = _free_port()
    cmd = [PYTHON, "-m", "repsuite", "serve", "--nlq-ckpt", str(checkpoint), "--faceswap-ckpt", tiny_ckpt,
           "--port", str(port), "--workdir", str(work / "work")]  # fmt: skip
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(OMP_NUM_THREADS="1")
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"server did not start:\n{(work / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url, work / "work"
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture(scope="module")
def chrome():
    if CHROMIUM is None:
        pytest.skip("no Chromium (Debian: apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def web_page(chrome, server):
    page = chrome.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server[0])
    page.wait_for_selector("#tab-nlq", state="attached", timeout=60_000)
    yield page
    page.close()


def _screenshot(page, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("REPSUITE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    # small files for the README: a 64-colour palette is plenty for a page of flat colours and text
    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)
    return path


def _first_clip(checkpoint):
    from repsuite.nlq.predictor import NLQPredictor
    from repsuite.serve.catalogue import NLQCatalogue

    predictor = NLQPredictor.from_checkpoint(checkpoint, device="cpu")
    catalogue = NLQCatalogue.from_data(predictor.data)
    clip = next(c for c in catalogue.clips.values() if c.questions)
    return predictor, catalogue, clip


@needs_chromium
def test_nlq_tab_answers_a_question_with_the_predictors_windows(web_page, checkpoint, tmp_path):
    page = web_page
    predictor, catalogue, clip = _first_clip(checkpoint)
    question = clip.questions[0].question
    first = next(iter(catalogue.clips.values()))  # the page opens on the first clip, its questions listed
    page.locator("#nlq-known input").click()
    playwright.expect(page.get_by_role("option", name=first.questions[0].question)).to_be_visible()
    page.keyboard.press("Escape")
    page.locator("#nlq-clip input").fill(clip.label)
    page.get_by_role("option", name=clip.label, exact=True).click()
    page.locator("#nlq-question textarea").fill(question)
    page.locator("#nlq-ask").click()
    page.wait_for_selector("#nlq-timeline svg rect.window", timeout=60_000)
    expected = predictor.query(clip.feature_rows(), question, top_k=5)
    cell = lambda r, c: page.locator(f"#nlq-windows [data-testid=cell-{r}-{c}]")  # noqa: E731  (Gradio's grid)
    playwright.expect(cell(len(expected.moments) - 1, 2)).not_to_be_empty(timeout=30_000)
    shown = [[float(cell(r, c).inner_text()) for c in (1, 2)] for r in range(len(expected.moments))]
    assert shown == [[round(m.start, 2), round(m.end, 2)] for m in expected.moments]
    bars = page.locator("#nlq-timeline rect.window").all()
    assert [float(b.get_attribute("data-start")) for b in bars] == [
        round(m.start, 2) for m in expected.moments
    ]
    truth = page.locator("#nlq-timeline rect.truth")
    assert truth.count() == 1 and float(truth.get_attribute("data-end")) == round(
        clip.questions[0].window[1], 2
    )
    assert "ground truth" in page.locator("#nlq-note").inner_text()
    _screenshot(page, "serve_nlq.png", tmp_path)


@needs_chromium
def test_face_tab_swaps_and_the_download_keeps_the_provenance(web_page, server, faces, tiny_ckpt, tmp_path):
    page = web_page
    from repsuite.faceswap import AlignedFaces, FaceSwapper

    source, target = faces / "pairs/source/0000.png", faces / "pairs/target/0001.png"
    page.get_by_role("tab", name="Face swap").click()
    page.locator("#face-source input[type=file]").set_input_files(str(source))
    page.locator("#face-target input[type=file]").set_input_files(str(target))
    playwright.expect(page.locator("#face-source")).to_contain_text("0000", timeout=30_000)
    playwright.expect(page.locator("#face-target")).to_contain_text("0001", timeout=30_000)
    page.locator("#face-swap").click()
    page.wait_for_selector("#face-result img", timeout=60_000)
    assert "Synthetic image" in page.locator("#face-label").inner_text()
    link = page.locator("#face-download a").first.get_attribute("href")
    data = page.request.get(link if link.startswith("http") else server[0] + link.lstrip("/")).body()
    png = Image.open(BytesIO(data))
    assert png.format == "PNG" and png.text["synthetic"] == "true"
    assert png.text["repsuite-checkpoint-sha256"] and png.text["source"] == "0000.png"
    swapper = FaceSwapper.from_checkpoint(tiny_ckpt, detector=AlignedFaces(), device="cpu")
    expected = swapper.swap(str(source), str(target)).image  # (3, H, W) uint8
    got = torch.from_numpy(np.asarray(png.convert("RGB"))).permute(2, 0, 1)
    assert (got.int() - expected.int()).abs().max() <= 1  # same swap (one grey level of float noise)
    _screenshot(page, "serve_faceswap.png", tmp_path)


@needs_chromium
def test_a_file_that_is_not_an_image_is_refused_in_the_page(web_page, faces, tmp_path):
    page = web_page
    fake = tmp_path / "holiday.png"
    fake.write_text("these are not pixels")
    page.get_by_role("tab", name="Face swap").click()
    page.locator("#face-source input[type=file]").set_input_files(str(fake))
    page.locator("#face-target input[type=file]").set_input_files(str(faces / "pairs/target/0001.png"))
    playwright.expect(page.locator("#face-target")).to_contain_text("0001", timeout=30_000)
    page.locator("#face-swap").click()
    page.get_by_text("source photo: not an image").first.wait_for(timeout=30_000)
    assert page.locator("#face-result img").count() == 0


def _api(url: str, name: str, data: list) -> tuple[str, str]:
    """Call a page endpoint through Gradio's HTTP API; returns (event kind, payload) of the final event."""
    body = json.dumps({"data": data}).encode()
    req = urllib.request.Request(f"{url}gradio_api/call/{name}", body, {"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{name}/{event_id}", timeout=600) as stream:
        kind = payload = ""
        for line in stream.read().decode().splitlines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
    return kind, payload


def test_paths_in_requests_are_never_read(server, faces):
    url, _ = server
    secret = Path(__file__).resolve()  # a readable file outside the upload folder
    fake = {"path": str(secret), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    kind, payload = _api(url, "face_swap", [fake, fake, "largest"])
    assert kind == "error"
    assert "pytest" not in payload  # nothing of the file came back


def test_twenty_concurrent_requests_complete(server, checkpoint, faces, tmp_path):
    """10 NLQ questions and 10 face swaps at once through the HTTP API; latency percentiles printed."""
    from gradio_client import Client, handle_file

    url, _ = server
    _, _, clip = _first_clip(checkpoint)
    errors, latencies = [], []

    def call(i: int) -> None:
        t = time.perf_counter()
        try:
            client = Client(url, verbose=False)
            if i % 2:
                client.predict(clip.label, clip.questions[0].question, 5, None, api_name="/nlq_ask")
            else:
                client.predict(handle_file(str(faces / "pairs/source/0000.png")),
                               handle_file(str(faces / "pairs/target/0001.png")), "largest",
                               api_name="/face_swap")  # fmt: skip
            latencies.append(time.perf_counter() - t)
        except Exception as err:  # every failure is reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(600)
    assert not errors and len(latencies) == 20, errors
    lat = sorted(latencies)
    p50, p95 = lat[len(lat) // 2], lat[int(0.95 * (len(lat) - 1))]
    print(f"serve load: 20 concurrent requests, p50 {p50:.2f} s, p95 {p95:.2f} s, max {lat[-1]:.2f} s")
    out = os.environ.get("REPSUITE_SCREENSHOTS")
    if out:
        Path(out, "serve_load.json").write_text(json.dumps({"requests": 20, "p50_s": p50, "p95_s": p95}))
