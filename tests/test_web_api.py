"""The web app's JSON API, through FastAPI's test client: every route and every error case.

The models are real (trained on slices of MNIST, Fashion-MNIST and the SMS collection, see
web_models.py), so the checks compare the API with the library itself: the class the server returns
for an upload must be the one `chainrule images predict` gives for the same file, the activations
must be the real forward pass, and the spam verdict the one `classify_message` gives.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

import chainrule
import chainrule.apps.spam.explain as explain
from chainrule.apps import image_presets
from chainrule.apps import images as images_app
from chainrule.apps import spam as spam_app
from chainrule.cli import main
from chainrule.data.corpora import SPAM
from chainrule.data.images import preprocess_image
from chainrule.data.mime import header_block_lines, parse_message
from chainrule.data.text import message_tokens
from chainrule.errors import UserError
from chainrule.model_file import FORMAT_VERSION, model_files
from chainrule.web import routes, services
from chainrule.web.app import DEFAULT_MAX_BODY_BYTES, create_app
from chainrule.web.http import BodyLimitMiddleware
from chainrule.web.services import (
    MAX_PARALLEL_DECODES,
    TOP_TOKENS,
    TOP_UNITS,
    ImageService,
    SpamService,
    find_latest_image_models,
    find_latest_model,
    saved_models,
)
from conftest import with_huge_weights
from web_models import as_upload, fashion_test, mnist_test, sms_messages, trained_models


def _test_client_class():
    # Starlette warns, on import, that its test client will move to the httpx2 package; that is
    # about Starlette's future, not about this code.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2.*")
        from fastapi.testclient import TestClient
    return TestClient


TestClient = _test_client_class()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory)


@pytest.fixture(scope="session")
def app(models):
    return create_app(models["digits"], models["spam"], images=[models["fashion"]])


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def digit_model(models):
    return chainrule.load_model(models["digits"])


@pytest.fixture(scope="session")
def samples(data_root):  # (data_root: skip, like every real-data test, when $CHAINRULE_DATA is unset)
    return mnist_test(12)


# what a model whose weights are finite but huge answers (`Sequential.checked_outputs`)
OVERFLOWED = "the model's outputs overflowed to NaN or infinity: its weights, or its inputs, are too large for float32"


def assert_error(response, status: int, *words: str) -> str:
    """The response has `status` and a JSON body {"error": one line} mentioning `words`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    message = body["error"]
    assert message and "\n" not in message
    for w in words:
        assert w.lower() in message.lower(), message
    return message


# -- page, health, models, schema -------------------------------------------------------------------


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="pad"', 'id="clear"', 'id="probs"', 'id="seen"', 'id="layers"', 'id="units"',
                   'id="image-model"', 'for="image-model"', 'id="message"', 'for="message"', "/static/app.js",
                   "/static/style.css", 'name="viewport"'):
        assert needle in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "/api/images/" in js.text and "/api/spam/classify" in js.text and "pointerdown" in js.text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert_error(client.get("/static/nothing.js"), 404)


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "digits": True, "spam": True, "images": ["mnist", "fashion"]}  # (it named
    # the digits model alone, not the image models served beside it)
    for path in ("/healthz", "/"):  # what uptime checkers send
        r = client.head(path)
        assert r.status_code == 200 and r.content == b""


def test_models_describes_what_is_loaded(client, models, digit_model):
    r = client.get("/api/models")
    assert r.status_code == 200
    body = r.json()
    assert body["hints"] == {}
    model, metadata = digit_model
    d = body["digits"]
    assert d["path"] == str(models["digits"]) and d["task"] == "images"
    assert d["format_version"] == FORMAT_VERSION
    assert d["num_parameters"] == model.num_parameters()
    assert d["layers"] == [type(layer).__name__ for layer in model.layers]
    assert d["metrics"]["test_accuracy"] == metadata["test_accuracy"]
    assert d["name"] == "mnist" and d["dataset"] == "mnist" and d["dataset_title"] == "MNIST"
    assert d["classes"] == [str(k) for k in range(10)] and d["picture"] == "digit"
    # every image model, the digits one first, each with its name and class names
    assert [m["name"] for m in body["images"]] == ["mnist", "fashion"]
    assert body["images"][0] == d
    f = body["images"][1]
    assert f["path"] == str(models["fashion"]) and f["task"] == "images" and f["dataset_title"] == "Fashion-MNIST"
    assert f["classes"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                            "Bag", "Ankle boot"]
    assert f["picture"] == "object"
    s = body["spam"]
    assert s["path"] == str(models["spam"]) and s["task"] == "spam"
    assert s["format_version"] == FORMAT_VERSION
    assert s["metrics"], "the spam model's metrics should be listed"
    bundle = spam_app.load_spam_model(models["spam"])  # (the page colours its meter by them)
    assert s["cutoffs"] == {"spam": bundle.spam_cutoff, "ham": bundle.ham_cutoff} and f["cutoffs"] is None


def test_models_lists_a_model_whose_folder_or_metadata_is_not_utf8(tmp_path, models):
    """A model kept in a folder whose name is not UTF-8, or trained from one (`--data` records it as
    `data_folder`), made /api/models answer 500 (a UnicodeEncodeError in its JSON) for every model:
    the page could list none. Such names are shown with U+FFFD where their bytes were."""
    folder = tmp_path / os.fsdecode(b"digits-\xff")
    shutil.copytree(models["digits"], folder)
    doc = json.loads((folder / "model.json").read_text())
    doc["metadata"]["data_folder"] = os.fsdecode(b"/data/mnist-\xfe")
    (folder / "model.json").write_text(json.dumps(doc))
    with TestClient(create_app(digits=folder, spam=models["spam"])) as c:
        r = c.get("/api/models")
        assert r.status_code == 200
        digits = r.json()["digits"]
        assert digits["path"] == str(tmp_path / "digits-\ufffd")
        assert digits["metadata"]["data_folder"] == "/data/mnist-\ufffd"
        assert r.json()["spam"]["path"] == str(models["spam"])


def test_a_model_whose_weights_overflow_its_outputs_is_a_500_naming_it_not_a_200_of_nulls(models, tmp_path):
    """Weights that are finite but huge (x1e30) load, and overflow the network's outputs to NaN:
    /api/digits/predict answered 200 with the label "0" and every probability null, explained or
    not, and /api/spam/classify 200 with a null probability. The served model is at fault, not
    the request: 500, with the one-line reason."""
    digits = with_huge_weights(models["digits"], tmp_path / "digits")
    spam = with_huge_weights(models["spam"], tmp_path / "spam")
    png = as_upload(mnist_test(1)[0][0])
    with TestClient(create_app(digits, spam)) as c:
        for explain in ("false", "true"):
            assert_error(c.post(f"/api/digits/predict?explain={explain}", content=png,
                                headers={"Content-Type": "image/png"}), 500, OVERFLOWED)
        assert_error(c.post("/api/spam/classify", content=b"WINNER! Claim your free prize now",
                            headers={"Content-Type": "text/plain"}), 500, OVERFLOWED)


def test_without_models_routes_say_how_to_train(models):
    with TestClient(create_app()) as c:
        assert c.get("/healthz").json() == {"status": "ok", "digits": False, "spam": False, "images": []}
        body = c.get("/api/models").json()
        assert body["digits"] is None and body["spam"] is None and body["images"] == []
        assert "chainrule digits train" in body["hints"]["digits"]
        assert "chainrule images train --data fashion" in body["hints"]["images"]
        assert "chainrule spam train" in body["hints"]["spam"]
        png = as_upload(mnist_test(1)[0][0])
        assert_error(c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"}), 503,
                     "chainrule digits train")
        assert_error(c.post("/api/images/mnist/predict", content=png, headers={"Content-Type": "image/png"}), 404,
                     "no image model named 'mnist'", "chainrule images train")
        assert_error(c.post("/api/spam/classify", content=b"hello"), 503, "chainrule spam train")
        assert c.get("/").status_code == 200


def test_openapi_schema_documents_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) >= {"/healthz", "/api/models", "/api/images/{name}/predict", "/api/digits/predict",
                          "/api/spam/classify"}
    for route in ("/api/images/{name}/predict", "/api/digits/predict"):
        predict = paths[route]["post"]
        assert set(predict["requestBody"]["content"]) >= {"image/png", "image/jpeg", "multipart/form-data",
                                                          "application/json"}
        assert {"400", "408", "413", "422", "503"} <= set(predict["responses"])  # (400 and 408 were left out)
        assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ImagePrediction")
    assert "404" in paths["/api/images/{name}/predict"]["post"]["responses"]
    classify = paths["/api/spam/classify"]["post"]
    assert {"text/plain", "message/rfc822", "application/json"} <= set(classify["requestBody"]["content"])
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("SpamVerdict")
    assert {"400", "408", "413", "422", "503"} <= set(classify["responses"])
    components = schema["components"]["schemas"]
    for name in ("ImagePrediction", "SpamVerdict", "ModelsResponse", "ErrorResponse", "Pixels"):
        assert name in components


def test_the_api_docs_pages_need_nothing_from_outside(client):
    """/docs (Swagger UI) loads its scripts and styles from this server: a machine without internet
    gets a working page, not a blank one waiting for a CDN. /redoc is not served: ReDoc's script
    fetches its logo from cdn.redoc.ly."""
    html = client.get("/docs")
    assert html.status_code == 200 and "openapi.json" in html.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text) + \
        re.findall(r"""(?:url|URL): *['"]([^"']+)['"]""", html.text)
    assert assets and not [a for a in assets if re.match(r"(?:https?:)?//", a)], assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404


# -- POST /api/digits/predict -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, media", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_predict_upload_matches_digits_predict(client, digit_model, samples, fmt, media):
    model, metadata = digit_model
    images, _ = samples
    for digit in images[:4]:
        data = as_upload(digit, fmt)
        r = client.post("/api/digits/predict", content=data, headers={"Content-Type": media})
        assert r.status_code == 200, r.text
        body = r.json()
        # the library's own path for `chainrule digits predict FILE`
        expected = images_app.predict_images(model, metadata, [data])[0]
        assert body["digit"] == expected["digit"] == body["index"] and body["label"] == str(body["digit"])
        np.testing.assert_allclose(body["probabilities"], expected["probabilities"], atol=1e-5)
        assert abs(sum(body["probabilities"]) - 1) < 1e-4
        np.testing.assert_allclose(body["input"], preprocess_image(data), atol=6e-4)
        assert "layers" not in body and "top_units" not in body


def test_predict_multipart_upload(client, digit_model, samples):
    model, metadata = digit_model
    data = as_upload(samples[0][1])
    r = client.post("/api/digits/predict", files={"file": ("seven.png", data, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["digit"] == images_app.predict_images(model, metadata, [data])[0]["digit"]


def test_predict_json_array(client, digit_model, samples):
    model, metadata = digit_model
    images, _ = samples
    for digit in images[:3]:
        pixels = (digit / 255.0).round(4)
        proba = model.predict_proba(image_presets.model_inputs(pixels.astype(np.float32), metadata))[0]
        for body in (pixels.tolist(), {"pixels": pixels.tolist()}):
            r = client.post("/api/digits/predict", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["digit"] == int(proba.argmax())
            np.testing.assert_allclose(out["probabilities"], proba, atol=1e-5)
            np.testing.assert_allclose(out["input"], pixels, atol=6e-4)
            # sent as curl -d sends it (the form's type) or with no type, as the spam route reads
            # JSON: it was refused as "not an image in a format read here"
            for headers in ({"Content-Type": "application/x-www-form-urlencoded"}, {}):
                untyped = client.post("/api/digits/predict", content=b" " + json.dumps(body).encode(), headers=headers)
                assert untyped.status_code == 200, untyped.text
                assert untyped.json() == out


# -- POST /api/images/{name}/predict -----------------------------------------------------------------


def test_each_image_model_answers_with_its_own_classes(client, models, samples):
    """The clothes model answers with Fashion-MNIST's class names, reading an upload as
    `chainrule images predict` does for it (as an object, not as a digit)."""
    model, metadata = images_app.load_image_model(models["fashion"])
    items, _ = fashion_test(4)
    for item in items:
        data = as_upload(item)
        r = client.post("/api/images/fashion/predict", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = images_app.predict_images(model, metadata, [data])[0]
        assert body["label"] == expected["label"] == metadata["classes"][body["index"]]
        assert "digit" not in body and len(body["probabilities"]) == 10
        np.testing.assert_allclose(body["probabilities"], expected["probabilities"], atol=1e-5)
        np.testing.assert_allclose(body["input"], preprocess_image(data, "object"), atol=6e-4)
    # the digits model under its own name answers exactly as the route kept from the first version
    png = as_upload(samples[0][0])
    a = client.post("/api/images/mnist/predict?explain=true", content=png, headers={"Content-Type": "image/png"})
    b = client.post("/api/digits/predict?explain=true", content=png, headers={"Content-Type": "image/png"})
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json() and a.json()["label"] == str(a.json()["digit"])


def test_an_unknown_image_model_name_is_404_naming_the_loaded_ones(client, samples):
    png = as_upload(samples[0][0])
    r = client.post("/api/images/cifar/predict", content=png, headers={"Content-Type": "image/png"})
    assert_error(r, 404, "no image model named 'cifar'", "loaded: mnist, fashion")


def test_image_models_are_named_by_their_data_set(tmp_path, models, samples):
    shutil.copytree(models["fashion"], tmp_path / "again")
    app = create_app(images=[models["fashion"], tmp_path / "again", ("clothes", models["fashion"]), models["digits"]])
    assert list(app.state.images) == ["fashion", "fashion-mlp", "clothes", "mnist"]
    assert app.state.digits is app.state.images["mnist"]  # the MNIST model answers the digits route
    png = as_upload(samples[0][0])
    with TestClient(create_app(images=[models["fashion"]])) as c:
        assert c.post("/api/images/fashion/predict", content=png, headers={"Content-Type": "image/png"}).status_code \
            == 200
        assert_error(c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"}), 503,
                     "no digits model")
    with pytest.raises(UserError, match="two image models are named 'x'"):
        create_app(images=[("x", models["fashion"]), ("x", models["digits"])])
    # a name given wins over one a model takes by default, whatever the order (it was "two image
    # models are named 'mnist'" when the unnamed one came first)
    shutil.copytree(models["digits"], tmp_path / "newer")
    app = create_app(digits=models["digits"], images=[("mnist", tmp_path / "newer")])
    assert app.state.images["mnist"].service.path == tmp_path / "newer"
    assert app.state.digits.service.name == "mnist-mlp"
    # a model named by its model.json is that model: served once, its format version read
    app = create_app(digits=models["digits"], spam=models["spam"] / "model.json",
                     images=[models["digits"] / "model.json"])
    assert list(app.state.images) == ["mnist"] and app.state.images["mnist"].service.path == models["digits"]
    spam = app.state.spam.service
    assert spam.path == models["spam"] and spam.info.format_version is not None


def test_predict_explain_is_the_real_forward_pass(client, digit_model, samples):
    model, _ = digit_model
    r = client.post("/api/digits/predict?explain=true", content=as_upload(samples[0][2]),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    layers = body["layers"]
    # every layer except the identities of inference (Dropout) and pure reshapes (Flatten)
    expected_idx = [i for i, layer in enumerate(model.layers) if not isinstance(layer, chainrule.Dropout)]
    assert [entry["index"] for entry in layers] == expected_idx
    for entry in layers:
        layer = model.layers[entry["index"]]
        assert entry["type"] == type(layer).__name__
        assert len(entry["values"]) == int(np.prod(entry["shape"])) == entry["shown"]
    # The last layer gives raw scores: their softmax is the returned probability vector.
    logits = np.array(layers[-1]["values"])
    soft = np.exp(logits - logits.max())
    np.testing.assert_allclose(soft / soft.sum(), body["probabilities"], atol=2e-3)
    # Each ReLU's output is max(0, its input), the previous layer's output.
    for before, after in zip(layers, layers[1:], strict=False):
        if after["type"] == "ReLU":
            np.testing.assert_allclose(after["values"], np.maximum(before["values"], 0), atol=1e-4)
    # The top units are the most active units after the first ReLU, with their first-layer weights.
    hidden = np.array(next(e["values"] for e in layers if e["type"] == "ReLU"))
    units = body["top_units"]
    assert len(units) == TOP_UNITS
    acts = [u["activation"] for u in units]
    assert acts == sorted(acts, reverse=True)
    np.testing.assert_allclose(acts, np.sort(hidden)[::-1][:TOP_UNITS], atol=1e-3)
    w = model.layers[0].weight.data
    for u in units:
        assert hidden[u["unit"]] == pytest.approx(u["activation"], abs=1e-3)
        np.testing.assert_allclose(u["weights"], w[:, u["unit"]].reshape(28, 28), atol=1e-4)


def test_predict_explain_on_a_conv_model(tmp_path, samples):
    """Feature maps come back as [channels, height, width]; the top units are the conv filters."""
    from chainrule.conv import Conv2D, MaxPool2D

    layers = [Conv2D(1, 4, 3, padding=1), chainrule.ReLU(), MaxPool2D(2), chainrule.Flatten(),
              chainrule.Linear(4 * 14 * 14, 10)]
    model = chainrule.Sequential(layers, input_shape=(1, 28, 28), seed=0)
    metadata = {"task": "digits", "preprocessing": {"layout": "image", "scale": 255.0}}
    model.save(tmp_path / "conv", metadata)
    with TestClient(create_app(digits=tmp_path / "conv")) as c:
        r = c.post("/api/digits/predict?explain=1", content=as_upload(samples[0][0]),
                   headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    by_type = {e["type"]: e for e in body["layers"]}
    assert "Flatten" not in by_type
    assert by_type["Conv2D"]["shape"] == [4, 28, 28] and len(by_type["Conv2D"]["values"]) == 4 * 28 * 28
    assert by_type["MaxPool2D"]["shape"] == [4, 14, 14]
    units = body["top_units"]
    assert len(units) == 4
    maps = np.array(by_type["ReLU"]["values"]).reshape(4, 28, 28)
    for u in units:
        assert u["activation"] == pytest.approx(maps[u["unit"]].mean(), abs=1e-3)
        np.testing.assert_allclose(u["weights"], model.layers[0].weight.data[u["unit"], 0], atol=1e-4)


def test_predict_rejects_what_is_not_an_image(client, samples):
    png = as_upload(samples[0][0])
    post = lambda data, media="image/png": client.post(  # noqa: E731
        "/api/digits/predict", content=data, headers={"Content-Type": media})
    assert_error(post(b"this is not an image"), 422, "not an image")
    assert_error(post(b"this is not an image", "application/octet-stream"), 422, "not an image")
    assert_error(post(png[: len(png) // 2]), 422)
    assert_error(post(b""), 422, "empty")
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, "PNG")
    assert_error(post(blank.getvalue()), 422, "no ink")
    for bad in (np.inf, np.nan):  # a float TIFF with one pixel that is not a number (was a 500)
        page = np.asarray(Image.fromarray(samples[0][0]).resize((84, 84)), np.float32) / 255
        page[0, 0] = bad
        tiff = io.BytesIO()
        Image.fromarray(page).save(tiff, "TIFF")
        assert_error(post(tiff.getvalue(), "image/tiff"), 422, "a float image with NaN or infinite pixels")
    if features.check("avif"):  # a damaged AVIF: Pillow's decoder says so with RuntimeError (was a 500)
        avif = io.BytesIO()
        Image.fromarray(255 - samples[0][0]).convert("RGB").save(avif, "AVIF")
        assert_error(post(avif.getvalue()[:-64] + bytes(64), "image/avif"), 422, "corrupt or truncated image")
    # A few kilobytes of PNG that would decode to 64 million pixels: refused from its header, with
    # the command line's limit and words
    huge = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(huge, "PNG")
    assert len(huge.getvalue()) < DEFAULT_MAX_BODY_BYTES
    assert_error(post(huge.getvalue()), 422, "8000x8000 pixels is too large (limit 50,000,000 pixels)")


@pytest.mark.parametrize("body, words", [
    (b"{not json", ["not valid json"]),
    (json.dumps([[0.0] * 28] * 27).encode(), ["28x28", "[27, 28]"]),
    (json.dumps([[0.0] * 27] * 28).encode(), ["28x28"]),
    (json.dumps([[0.0] * 28] * 27 + [[0.0] * 27]).encode(), ["28x28"]),
    (json.dumps([[2.0] * 28] * 28).encode(), ["[0, 1]"]),
    (json.dumps([[-0.5] * 28] * 28).encode(), ["[0, 1]"]),
    (json.dumps([["a"] * 28] * 28).encode(), ["numbers"]),
    (json.dumps([["0.5"] * 28] * 28).encode(), ["numbers"]),
    (json.dumps([[True] * 28] * 28).encode(), ["numbers"]),
    (json.dumps([[0] * 28] * 28).encode(), ["no ink"]),
    (b"[" + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]", ["[0, 1]"]),
    (json.dumps({"image": []}).encode(), ["pixels"]),
    (json.dumps("seven").encode(), ["28x28"]),
    (json.dumps([[10**400] * 28] * 28).encode(), ["numbers"]),  # no float holds it
    (json.dumps({"pixels": [[0, 10**400]]}).encode(), ["numbers"]),
    (b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
    (b"[" + b"1" * 4301 + b"]", ["too long"]),  # (Python's int() refuses more digits: was a 500)
    (json.dumps([[1e-300] * 28] * 28).encode(), ["no ink"]),  # (0 in float32)
], ids=["not json", "27 rows", "27 columns", "ragged", "above 1", "below 0", "strings", "numbers as strings",
        "booleans", "blank", "NaN", "no pixels",
        "a string", "10**400", "10**400 in pixels", "nested 100,000 deep", "4,301 digits", "blank in float32"])
def test_predict_rejects_bad_json(client, body, words):
    r = client.post("/api/digits/predict", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 422, *words)


def test_predict_rejects_bad_forms_and_parameters(client, samples):
    assert_error(client.post("/api/digits/predict", files={"other": ("x.png", b"abc", "image/png")}), 422, "file")
    # a text field named file (curl -F 'file=<x'), not an upload: said so, not that the field is missing
    assert_error(client.post("/api/spam/classify", data={"file": "Subject: hi\n\nhello"},
                             files={"other": ("x", b"", "text/plain")}), 422, "'file' is text, not an uploaded file")
    assert_error(client.post("/api/digits/predict", files={"other": ("x.png", b"abc", "image/png")},
                             data={"file": "not a file"}), 422, "file")
    assert_error(client.post("/api/digits/predict", content=b"--x\r\nbroken",
                             headers={"Content-Type": "multipart/form-data"}), 422)
    assert_error(client.post("/api/digits/predict?explain=maybe", content=as_upload(samples[0][0]),
                             headers={"Content-Type": "image/png"}), 422, "explain")
    assert_error(client.get("/api/digits/predict"), 405)
    assert_error(client.get("/api/nothing"), 404)


def test_a_form_with_two_files_is_refused(client, samples):
    """Of two parts named 'file' the last was used and the first dropped without a word (curl -F
    file=@a.png -F file=@b.png answered for b.png alone)."""
    pngs = [as_upload(samples[0][i]) for i in (0, 1)]
    for route in ("/api/digits/predict", "/api/spam/classify"):
        r = client.post(route, files=[("file", ("a.png", pngs[0], "image/png")),
                                      ("file", ("b.png", pngs[1], "image/png"))])
        assert_error(r, 422, "one file per request", "2")


def test_a_multipart_form_cut_off_says_so(client):
    """A form cut off before its closing boundary got "the multipart form needs a file field named
    'file'" (its one part was dropped unfinished, without a word)."""
    form = {"Content-Type": "multipart/form-data; boundary=XX"}
    part = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="m.txt"\r\n\r\nwin cash now'
    for body in (part, part + b"\r\n--XX", part + b"\r\n--XX\r\n"):
        assert_error(client.post("/api/spam/classify", content=body, headers=form), 422, "cut off",
                     "closing boundary")
    whole = client.post("/api/spam/classify", content=part + b"\r\n--XX--\r\n", headers=form)
    assert whole.status_code == 200, whole.text


def test_a_malformed_multipart_form_writes_nothing_into_the_log(client, caplog):
    """python-multipart logged a line of its own for a malformed body ("Expected boundary character
    45, got 97 at index 2"), unprefixed, on the server's standard error: any client could write
    lines into its log. The client is told (422); the log is not."""
    form = {"Content-Type": "multipart/form-data; boundary=XX"}
    with caplog.at_level(logging.DEBUG):
        for body in (b"abc", b"--XX\r\nbroken", b"--XXabc"):
            assert_error(client.post("/api/spam/classify", content=body, headers=form), 422, "multipart")
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")], caplog.text


def test_bodies_over_the_limit_get_413(client, models, samples):
    big = b"\x89PNG" + b"0" * (DEFAULT_MAX_BODY_BYTES + 1)
    for route in ("/api/digits/predict", "/api/spam/classify"):
        assert_error(client.post(route, content=big, headers={"Content-Type": "image/png"}), 413, "limit")

    def chunks():  # no Content-Length: the size is only known while reading
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    for route in ("/api/digits/predict", "/api/spam/classify"):
        assert_error(client.post(route, content=chunks(), headers={"Content-Type": "text/plain"}), 413, "limit")
    # the limit is a setting
    small = create_app(models["digits"], models["spam"], max_body_bytes=1000)
    png = as_upload(samples[0][0])
    assert len(png) > 1000
    with TestClient(small) as c:
        assert_error(c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"}), 413, "1,000")
        assert_error(c.post("/api/spam/classify", content=b"a" * 1001), 413)
        assert c.post("/api/spam/classify", content=b"Are we still on for lunch?").status_code == 200


def test_a_body_over_the_limit_sent_with_a_page_request_does_not_break_its_answer(models):
    """A static file is streamed while its response listens for a disconnect (ASGI spec 2.3, as
    uvicorn runs it), reading the request body as it goes. A chunked body over the limit arriving
    then is past refusing: the page is sent whole, with no error (it was a half-sent answer and a
    RuntimeError: "response already started")."""
    app = create_app(models["digits"], models["spam"], max_body_bytes=1000)

    async def request(path: str) -> list[dict]:
        sent, chunks = [], iter([b"x" * 600] * 5)

        async def receive():
            chunk = next(chunks, None)
            if chunk is None:
                await asyncio.sleep(3600)  # the client sends no more (a disconnect never comes)
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "scheme": "http", "server": ("test", 80), "client": ("test", 1),
                 "headers": [(b"host", b"test"), (b"transfer-encoding", b"chunked")]}
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent

    for path in ("/", "/static/app.js"):
        sent = asyncio.run(request(path))
        start, *body = sent
        assert start["type"] == "http.response.start" and start["status"] == 200, path
        length = int(dict(start["headers"])[b"content-length"])
        assert sum(len(m.get("body", b"")) for m in body) == length and not body[-1].get("more_body"), path


# -- POST /api/spam/classify --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def spam_bundle(models):
    return spam_app.load_spam_model(models["spam"])


def test_classify_matches_the_library(client, spam_bundle):
    messages = sms_messages()
    picked = [m for m in messages if m[0] == "spam"][:3] + [m for m in messages if m[0] == "ham"][:3]
    for _, text in picked:
        expected = spam_app.classify_message(spam_bundle, text.encode(), top=TOP_TOKENS)
        r = client.post("/api/spam/classify", content=text.encode(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == expected["label"] and body["label"] in ("spam", "ham", "unsure")
        assert body["probability"] == pytest.approx(expected["probability"], abs=1e-6)
        assert (body["label"] == "spam") == (body["probability"] >= spam_bundle.spam_cutoff)
        assert (body["label"] == "ham") == (body["probability"] < spam_bundle.ham_cutoff)
        assert [t["token"] for t in body["top_tokens"]] == [t["token"] for t in expected["top_tokens"]]
        assert body["top_tokens"], "the tokens behind the decision should be listed"
        for t in body["top_tokens"]:
            assert isinstance(t["token"], str) and t["token"] and isinstance(t["weight"], float)


def test_a_message_is_parsed_outside_the_model_lock(models, monkeypatch):
    # eight 1 MB deep-HTML messages held the lock for 14 s while they were parsed; only the network's
    # passes need it, so other requests wait for milliseconds, not for someone else's parsing
    service = SpamService.load(models["spam"])
    calls = []

    def held(lock) -> bool:  # (whether some thread holds it: another thread cannot take it)
        got = []

        def try_it():
            got.append(lock.acquire(blocking=False))
            if got[0]:
                lock.release()

        thread = threading.Thread(target=try_it)
        thread.start()
        thread.join()
        return not got[0]

    real = explain.item_tokens  # (parsing and tokenising, of mail and SMS alike)
    monkeypatch.setattr(explain, "item_tokens", lambda kind, *a: (
        calls.append((kind, held(service.bundle.model.lock))), real(kind, *a))[1])
    html = b"<div>" * 2000 + b"win a prize" + b"</div>" * 2000
    service.classify(b"From: a@example.com\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n" + html)
    service.classify(b"Free entry: text WIN to 80082")
    assert calls == [("mail", False), ("sms", False)]


def test_bodies_are_read_outside_the_event_loop(client, monkeypatch):
    """A 5 MB urlencoded form took 0.9 s to parse, and 5 MB of JSON 0.1 to 0.2 s, in the event
    loop, which answered no other request meanwhile: they are read in the thread pool, where the
    model's work is done."""
    readers = ("json_body", "untyped_json", "message_from_json", "message_from_form", "declared_text", "check_text",
               "pixels_from_json")
    in_loop = []

    def watched(name, read):
        def reader(*args):
            try:
                asyncio.get_running_loop()
                in_loop.append(name)
            except RuntimeError:  # (no event loop runs in this thread)
                pass
            return read(*args)
        return reader

    for name in readers:
        monkeypatch.setattr(routes, name, watched(name, getattr(routes, name)))
    for body, media in ((b'{"message": "win a prize"}', "application/json"), (b'{"message": "win a prize"}', ""),
                        (b"message=win+a+prize", "application/x-www-form-urlencoded"), (b"win a prize", "text/plain")):
        assert client.post("/api/spam/classify", content=body, headers={"Content-Type": media}).status_code == 200
    pixels = json.dumps(np.eye(28).tolist())
    for media in ("application/json", "application/x-www-form-urlencoded"):
        r = client.post("/api/digits/predict", content=pixels, headers={"Content-Type": media})
        assert r.status_code == 200, r.text
    assert not in_loop, in_loop


def test_classify_raw_email_json_and_multipart(client, spam_bundle):
    email = (b"From: Prize Centre <win@prizes.example>\r\nTo: you@example.com\r\nSubject: You have WON\r\n"
             b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nCongratulations! You have won a \xa3500 prize."
             b" Call 09061701461 now to claim. Txt STOP to opt out.\r\n")
    expected = spam_app.classify_message(spam_bundle, email)
    for kwargs in (
        {"content": email, "headers": {"Content-Type": "message/rfc822"}},
        {"content": email},
        {"files": {"file": ("mail.eml", email, "message/rfc822")}},
    ):
        r = client.post("/api/spam/classify", **kwargs)
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    text = "Hey, are we still meeting at 6? I'll bring the notes."
    r = client.post("/api/spam/classify", json={"message": text})
    assert r.status_code == 200
    assert r.json()["probability"] == pytest.approx(
        spam_app.classify_message(spam_bundle, text.encode())["probability"], abs=1e-6)


def test_classify_says_how_it_read_the_text(client):
    """The page guessed where an email's headers end: an SMS beginning "URGENT:" (or a one-line "Subject:
    free money") was taken for a header and its words left unmarked, and a continuation line of blanks
    ended the headers where the server's parser read on. The answer says how the text was read and how
    many of its lines (the blank one after them included) are the header block."""
    for text, read_as, header_lines in (
            ("URGENT: you have won a prize, call 09061701461 now", "sms", 0),
            ("To: all - free prize\ncall now", "sms", 0),
            ("Subject: free money prize", "sms", 0),
            ("From: a@example.com\nSubject: hi\n\nsee you at 6", "mail", 3),
            ("Subject: prix \u20ac\r\n \t\r\nX-Note: y\r\n\r\nbody\r\n", "mail", 4),
            ("Subject: hi\nTo: b\nno blank line before the body", "mail", 2),
            ("From a@example.com Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody", "mail", 3)):
        r = client.post("/api/spam/classify", content=text.encode(),
                        headers={"Content-Type": "text/plain; charset=utf-8"})
        assert r.status_code == 200, r.text
        assert (r.json()["read_as"], r.json()["header_lines"]) == (read_as, header_lines), text


def _mail_probability(bundle, raw: bytes) -> float:
    """P(spam) of `raw` parsed as an email, as `spam classify` reads every file."""
    return spam_app.explain_row(bundle, message_tokens(parse_message(raw), bundle.config))[0]


@pytest.fixture(scope="session")
def corpus_spam(spamassassin_messages) -> bytes:
    """A SpamAssassin spam as a mail program saves it: without the corpus's mbox "From " line."""
    raw = next(m.data for m in spamassassin_messages if m.label == SPAM)
    return re.sub(rb"\AFrom [^\n]*\n", b"", raw)


def test_classify_reads_a_mail_as_mail_whatever_field_it_starts_with(client, spam_bundle, corpus_spam):
    """A spam with DKIM-Signature: (or ARC-Seal:, Authentication-Results:, ...) as its first field,
    none of a fixed list of names, was read as an SMS (read_as "sms", header_lines 0), even sent as
    message/rfc822; `spam classify` reads it as mail. A body or a form's file declared
    message/rfc822 is an email whatever it starts with (and keeps its bytes, whatever charset the
    type says: the mail's own headers say its parts'), and any other is when its lines go on as a
    header block."""
    dkim = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel;\n\th=from:to:subject; bh=abc=; b=xyz\n"
    for field in (dkim, b"ARC-Seal: i=1; cv=none; d=example.com\n", b"Authentication-Results: mx.example; spf=pass\n",
                  b"Received-SPF: pass\n", b"In-Reply-To: <1@example.com>\n", b"References: <1@example.com>\n",
                  b"Bcc: you@example.com\n"):
        raw = field + corpus_spam
        for kwargs in ({"content": raw, "headers": {"Content-Type": "message/rfc822"}},
                       {"files": {"file": ("mail.eml", raw, "message/rfc822")}},
                       {"content": raw, "headers": {"Content-Type": "text/plain"}}, {"content": raw}):
            r = client.post("/api/spam/classify", **kwargs)
            assert r.status_code == 200, r.text
            assert (r.json()["read_as"], r.json()["header_lines"]) == ("mail", header_block_lines(raw)), field
            assert r.json()["probability"] == pytest.approx(_mail_probability(spam_bundle, raw), abs=1e-6), field
    # one field and a blank line: an SMS's shape ("Note: ..."), unless the body is declared an email
    one_field = "Comments: WIN a \u00a3500 prize\n\nCall 09061701461 now to claim".encode("latin-1")
    expected = _mail_probability(spam_bundle, one_field)
    for media in ("message/rfc822", "message/rfc822; charset=utf-16", "message/rfc822; charset=koi8-r"):
        r = client.post("/api/spam/classify", content=one_field, headers={"Content-Type": media})
        assert r.status_code == 200, r.text
        assert (r.json()["read_as"], r.json()["header_lines"]) == ("mail", 2), media
        assert r.json()["probability"] == pytest.approx(expected, abs=1e-6), media
    r = client.post("/api/spam/classify", content=one_field, headers={"Content-Type": "text/plain"})
    assert (r.json()["read_as"], r.json()["header_lines"]) == ("sms", 0)


def test_classify_parses_a_mail_pasted_below_a_blank_line_from_its_first_field(client, spam_bundle, corpus_spam):
    """A mail pasted with a blank line above it was said to be read as mail, and parsed from that
    line: an empty header block, every header read as body text (header_lines 1, no header tokens;
    a spam of 0.549 was unsure). It is parsed from its first field, and the blank lines count in
    header_lines, from the top of the text the page sent, where the page counts them."""
    expected = client.post("/api/spam/classify", content=corpus_spam, headers={"Content-Type": "text/plain"}).json()
    assert expected["read_as"] == "mail" and expected["header_lines"] == header_block_lines(corpus_spam) > 10
    assert any(":" in t["token"] for t in expected["top_tokens"])
    for blank, lines in ((b"\n", 1), (b"\r\n\r\n", 2), (b"\n \n\t\n", 3)):
        for media in ("text/plain; charset=utf-8", "message/rfc822"):
            r = client.post("/api/spam/classify", content=blank + corpus_spam, headers={"Content-Type": media})
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["read_as"] == "mail" and answer["header_lines"] == expected["header_lines"] + lines, blank
            assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-6), blank
            assert answer["top_tokens"] == expected["top_tokens"]


def test_classify_reads_a_form_and_json_sent_without_their_types(client, spam_bundle):
    """curl -d and --data-urlencode (and HTML forms) send application/x-www-form-urlencoded: its
    `message` field was classified still encoded ("message=You%27ve+won+tkts..." as the text: spam
    became unsure), and JSON that curl -d sends with that type, or sent with none, was read as text
    too. A body of that type that is no form is the raw message, as curl --data-binary sends it."""
    text = next(t for label, t in sms_messages() if label == "spam" and "\u00a3" in t and "'" in t)
    expected = spam_app.classify_message(spam_bundle, text.encode(), top=TOP_TOKENS)
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def assert_read(r):
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(expected["probability"], abs=1e-6)
        assert [t["token"] for t in r.json()["top_tokens"]] == [t["token"] for t in expected["top_tokens"]]

    encoded = urllib.parse.urlencode({"message": text}).encode()
    assert not set("&+%") & set(text)  # (so that it reads the same unencoded)
    for body, headers in ((encoded, form),  # curl --data-urlencode message=...
                          (b"message=" + text.encode(), form),  # curl -d "message=...", the £ as UTF-8
                          (b"lang=en&" + encoded + b"&send=Check", form),  # an HTML form's fields
                          (json.dumps({"message": text}).encode(), form),  # curl -d '{"message": ...}'
                          (json.dumps({"message": text}).encode(), {}),
                          (text.encode(), form)):  # curl --data-binary @sms.txt, no -H
        assert_read(client.post("/api/spam/classify", content=body, headers=headers))
    assert_read(client.post("/api/spam/classify", data={"message": text}))  # (httpx's own form)
    assert_error(client.post("/api/spam/classify", content=b"message=a&message=b", headers=form), 422,
                 "2 fields named 'message'")
    # a text that begins as a form does, with no field `message`, is the text (it was a 422)
    for text in ("2+2=4? Claim your prize now", "x=5 free ringtones, txt WIN to 80086"):
        r = client.post("/api/spam/classify", content=text.encode(), headers=form)
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(
            spam_app.classify_message(spam_bundle, text.encode())["probability"], abs=1e-6)
    assert_error(client.post("/api/spam/classify", content=b"message=", headers=form), 422, "empty")
    assert_error(client.post("/api/spam/classify", content=b'{"text": "hi"}'), 422, '{"message"')
    # said to be text, a body is the text, whatever it looks like
    r = client.post("/api/spam/classify", content=encoded, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["probability"] != pytest.approx(expected["probability"], abs=1e-6)


def test_classify_reads_the_charset_the_body_declares(client, spam_bundle):
    """text/plain; charset=utf-16 was refused as "contains NUL bytes", and an SMS in KOI8-R was read
    as Windows-1252. An email keeps its bytes (its own headers say their charsets), and so does a
    body that its charset does not read; an unknown charset is a 422."""
    spam = next(text for label, text in sms_messages() if label == "spam" and "\u00a3" in text)  # (a pound sign)
    russian = "Поздравляем! Вы выиграли приз 1000 рублей, позвоните сейчас"  # (the collection is English)
    post = lambda data, charset: client.post(  # noqa: E731
        "/api/spam/classify", content=data, headers={"Content-Type": f"text/plain; charset={charset}"})
    for text, charsets in ((spam, ("utf-16", "UTF-16LE", "utf-32", "utf-8", "iso-8859-1")),
                           (russian, ("koi8-r", "windows-1251", '"utf-16"'))):
        expected = spam_app.classify_message(spam_bundle, text.encode(), top=TOP_TOKENS)
        for charset in charsets:
            r = post(text.encode(charset.strip('"')), charset)
            assert r.status_code == 200, (charset, r.text)
            assert r.json()["probability"] == pytest.approx(expected["probability"], abs=1e-6), charset
            assert [t["token"] for t in r.json()["top_tokens"]] == [t["token"] for t in expected["top_tokens"]], charset
    email = (b"From: Prize Centre <win@prizes.example>\r\nSubject: You have WON\r\n"
             b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nYou have won a \xa3500 prize. Call 09061701461.\r\n")
    latin = spam.encode("latin-1")
    for data, charset in ((email, "iso-8859-1"), (email, "utf-16"), (latin, "utf-8")):
        undeclared = client.post("/api/spam/classify", content=data, headers={"Content-Type": "text/plain"})
        assert post(data, charset).json() == undeclared.json(), charset
    assert_error(post(spam.encode(), "klingon"), 422, "unknown charset", "klingon")
    # uploaded as a form's file, in the charset its part declares (the request's own type has none)
    expected = spam_app.classify_message(spam_bundle, spam.encode(), top=TOP_TOKENS)
    upload = ("sms.txt", spam.encode("utf-16"), "text/plain; charset=utf-16")
    r = client.post("/api/spam/classify", files={"file": upload})
    assert r.status_code == 200 and r.json()["probability"] == pytest.approx(expected["probability"], abs=1e-6), r.text


def test_classify_reads_utf8_under_another_label_as_the_mail_reader_does(client):
    """Since the label goes through the mail reader's codecs, gb2312 reads as GB18030, which turns
    UTF-8 into garbage without an error: a UTF-8 text under it is read as UTF-8, as mail is."""
    text = "Grüße aus München: WIN a FREE prize, call now".encode()  # (GB18030 reads it 'Gr眉脽e')
    undeclared = client.post("/api/spam/classify", content=text, headers={"Content-Type": "text/plain"})
    for charset in ("gb2312", "iso-8859-1", "shift_jis"):
        r = client.post("/api/spam/classify", content=text, headers={"Content-Type": f"text/plain; charset={charset}"})
        assert r.status_code == 200 and r.json() == undeclared.json(), charset


@pytest.mark.parametrize("charset", ["punycode", "unicode-escape", "zlib", "rot13", "idna"])
def test_classify_refuses_a_charset_no_mail_program_reads(client, charset):
    """The body was decoded in any codec Python knows: a 2 MB body labelled punycode (decoded in time
    growing with the square of its length) held the whole server for minutes. Those the mail
    reader refuses are unknown charsets here too."""
    body = b"a" * 20_000 + b"-" + b"a" * 20_000
    r = client.post("/api/spam/classify", content=body, headers={"Content-Type": f"text/plain; charset={charset}"})
    assert_error(r, 422, "unknown charset", charset)


def test_classify_reads_utf16_by_its_byte_order_mark(client, spam_bundle):
    """A file saved as UTF-16 with its byte order mark (Notepad's "Unicode") was refused as "NUL
    bytes" unless the request declared charset=utf-16; `spam classify --sms` reads it by its mark,
    and so does the web."""
    spam = next(text for label, text in sms_messages() if label == "spam" and "\u00a3" in text)
    expected = spam_app.classify_message(spam_bundle, spam.encode(), top=TOP_TOKENS)
    for data in (spam.encode("utf-16"), codecs.BOM_UTF16_BE + spam.encode("utf-16-be"), spam.encode("utf-32")):
        for kwargs in ({"content": data, "headers": {"Content-Type": "text/plain"}}, {"content": data},
                       {"files": {"file": ("sms.txt", data, "text/plain")}}):
            r = client.post("/api/spam/classify", **kwargs)
            assert r.status_code == 200, r.text
            assert r.json()["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    # without the mark, NUL bytes are still no text
    assert_error(client.post("/api/spam/classify", content=spam.encode("utf-16-le"),
                             headers={"Content-Type": "text/plain"}), 422, "NUL")


def test_classify_reads_a_lone_surrogate_as_a_replacement_character(client):
    """JSON may carry "\\ud800", which no UTF-8 text can: it is read as "?", not a 500."""
    body = b'{"message": "Subject: win \\ud800 now\\n\\nclaim your prize \\udfff today"}'
    r = client.post("/api/spam/classify", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] in ("spam", "ham", "unsure")


def test_classify_rejects_what_is_not_text(client, samples):
    post = lambda data, media="text/plain": client.post(  # noqa: E731
        "/api/spam/classify", content=data, headers={"Content-Type": media})
    assert_error(post(b""), 422, "empty")
    assert_error(post(b"  \r\n\t "), 422, "empty")
    assert_error(post(as_upload(samples[0][0])), 422, "not text")
    assert_error(post(as_upload(samples[0][0]), "image/png"), 422, "not text")
    assert_error(post(bytes(range(256)) * 4, "application/octet-stream"), 422, "not text")
    assert_error(post(b"\x01\x02\x03\x04\x05\x06hello", "text/plain"), 422, "not text")
    assert_error(post(b'{"text": "hi"}', "application/json"), 422, "message")
    assert_error(post(b'{"message": 5}', "application/json"), 422, "message")
    assert_error(post(b"{oops", "application/json"), 422, "json")
    assert_error(client.post("/api/spam/classify", files={"attachment": ("a.txt", b"hi", "text/plain")}), 422, "file")


# -- never a 500 --------------------------------------------------------------------------------------

MEDIA = st.sampled_from([None, "image/png", "image/jpeg", "application/json", "text/plain", "message/rfc822",
                         "multipart/form-data", "multipart/form-data; boundary=xyz", "application/octet-stream",
                         "text/plain; charset=utf-16", "text/plain; charset=utf-7", "text/plain; charset=klingon"])


JSON_VALUES = st.recursive(
    st.none() | st.floats() | st.integers() | st.integers(min_value=10**300, max_value=10**500)
    | st.text(max_size=5) | st.sampled_from(["\ud800", "\udfff x", "\x00"]),
    lambda c: st.lists(c, max_size=30) | st.dictionaries(st.sampled_from(["pixels", "message", "x"]), c, max_size=2),
    max_leaves=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=600), st.text(max_size=300).map(str.encode),
                      st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
                      st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth)),
       media=MEDIA, route=st.sampled_from(["/api/digits/predict", "/api/digits/predict?explain=true",
                                           "/api/images/fashion/predict?explain=true", "/api/spam/classify"]))
def test_arbitrary_bodies_never_give_a_server_error(client, body, media, route):
    headers = {"Content-Type": media} if media else {}
    r = client.post(route, content=body, headers=headers)
    assert r.status_code in (200, 422), (r.status_code, r.text)
    if r.status_code == 422:
        assert_error(r, 422)


IMAGE_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP", "PPM"]


@st.composite
def image_files(draw) -> bytes:
    """The bytes of an image file of any mode, format and shape Pillow writes, random pixels, whole or
    cut short (as a failed upload leaves it)."""
    mode, fmt = draw(st.sampled_from(IMAGE_MODES)), draw(st.sampled_from(IMAGE_FORMATS))
    width, height = draw(st.tuples(st.integers(1, 64), st.integers(1, 64))
                         | st.tuples(st.integers(1, 700), st.integers(1, 3))  # thin strips, both ways
                         | st.tuples(st.integers(1, 3), st.integers(1, 700)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = Image.frombytes("RGBA", (width, height), rng.integers(0, 256, (height, width, 4), np.uint8).tobytes())
    img = base.convert("RGB").convert(mode) if mode in ("CMYK", "YCbCr", "LAB", "HSV") else base.convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # that format cannot hold that mode: RGB, which all of them can
        buf = io.BytesIO()
        base.convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=image_files(), media=st.sampled_from([None, "image/png", "image/jpeg", "application/octet-stream"]),
       route=st.sampled_from(["/api/digits/predict", "/api/digits/predict?explain=true",
                              "/api/images/fashion/predict?explain=true"]),  # (photos prepared as objects)
       multipart=st.booleans())
def test_arbitrary_images_never_give_a_server_error(client, body, media, route, multipart):
    if multipart:
        r = client.post(route, files={"file": ("upload", body, media or "application/octet-stream")})
    else:
        r = client.post(route, content=body, headers={"Content-Type": media} if media else {})
    assert r.status_code in (200, 422), (r.status_code, r.text)
    if r.status_code == 422:
        assert_error(r, 422)


# -- chainrule serve ----------------------------------------------------------------------------------


# Damaged metadata that loaded before and then made every predict or classify answer 500.
BAD_METADATA = {
    "digits": [
        lambda meta: meta.__setitem__("preprocessing", [28, 28]),
        lambda meta: meta["preprocessing"].__setitem__("scale", "255"),
        lambda meta: meta["preprocessing"].__setitem__("std", 0),
        lambda meta: meta["preprocessing"].__setitem__("layout", "image"),  # the network reads flat vectors
        lambda meta: meta.__setitem__("classes", "0123456789"),
        lambda meta: meta.__setitem__("classes", [str(k) for k in range(9)]),  # for 10 outputs
    ],
    "fashion": [
        lambda meta: meta["preprocessing"].__setitem__("picture", "sketch"),
        lambda meta: meta.__setitem__("classes", ["Shirt"] * 10),
        lambda meta: meta.__setitem__("dataset", ["fashion"]),
    ],
    "spam": [
        lambda meta: meta.__setitem__("hashing", [1 << 16]),
        lambda meta: meta["hashing"].__setitem__("bigrams", "yes"),
        lambda meta: meta["hashing"].__setitem__("char_ngrams", "4"),
        lambda meta: meta.__setitem__("cutoffs", {"spam": "0.9", "ham": "0.1"}),
        lambda meta: meta.__setitem__("cutoffs", [0.9, 0.1]),
        lambda meta: meta.__setitem__("training", ["pos_weight", 2.0]),
    ],
}


@pytest.mark.parametrize(("task", "case"), [(t, i) for t, cases in BAD_METADATA.items() for i in range(len(cases))])
def test_a_model_with_damaged_metadata_is_refused_at_load(tmp_path, models, task, case):
    # so that `chainrule serve` refuses to start, in one line, rather than answer 500 to every request
    bad = tmp_path / task
    shutil.copytree(models[task], bad)
    doc = json.loads((bad / "model.json").read_text())
    BAD_METADATA[task][case](doc["metadata"])
    (bad / "model.json").write_text(json.dumps(doc))
    kind = "spam" if task == "spam" else "image model"
    with pytest.raises(chainrule.ModelFileError, match=f"invalid {kind} metadata"):
        create_app(**({"images": [bad]} if task == "fashion" else {task: bad}))


def test_find_latest_model_picks_the_newest_of_each_task(tmp_path, models, caplog):
    runs = tmp_path / "runs"
    for name, src, when in (("old-digits", "digits", 1_000_000), ("new-digits", "digits", 2_000_000),
                            ("nested/spam-a", "spam", 1_500_000)):
        shutil.copytree(models[src], runs / name)
        os.utime(runs / name / "model.json", (when, when))
    (runs / "broken").mkdir()
    (runs / "broken" / "model.json").write_text("{not json")
    assert find_latest_model("images", saved_models(runs)) == runs / "new-digits"
    # a newer model whose weights are cut short is passed over, not served (nor a reason to serve nothing)
    shutil.copytree(models["digits"], runs / "newest-digits")
    weights = model_files(runs / "newest-digits")["model"]
    weights.write_bytes(weights.read_bytes()[:1000])
    assert find_latest_model("images", saved_models(runs)) == runs / "new-digits"
    # or whose weights are not those its model.json describes, or whose architecture cannot be
    # built (each stopped `serve` with an error)
    for name, change in (("other-shape", lambda layers: layers[0]["args"].__setitem__("out_features", 513)),
                         ("bad-dropout", lambda layers: layers[2]["args"].__setitem__("p", 5))):
        shutil.copytree(models["digits"], runs / name)
        doc = json.loads((runs / name / "model.json").read_text())
        change(doc["layers"])
        (runs / name / "model.json").write_text(json.dumps(doc))
        assert find_latest_model("images", saved_models(runs)) == runs / "new-digits", name
    # and so is one a newer chainrule wrote, saying why
    shutil.copytree(models["digits"], runs / "future-digits")
    doc = json.loads((runs / "future-digits" / "model.json").read_text())
    (runs / "future-digits" / "model.json").write_text(json.dumps({**doc, "format_version": 99}))
    with caplog.at_level(logging.WARNING):
        assert find_latest_model("images", saved_models(runs)) == runs / "new-digits"
    assert "future-digits" in caplog.text and "format version 99" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # one scan serves both lookups: said once
        saved = saved_models(runs)
        assert find_latest_model("images", saved) == runs / "new-digits"
        assert find_latest_image_models(saved)["mnist"] == runs / "new-digits"
    assert sum("future-digits" in r.getMessage() for r in caplog.records) == 1
    assert find_latest_model("spam", saved_models(runs)) == runs / "nested" / "spam-a"
    assert find_latest_model("images", saved_models(tmp_path / "nowhere")) is None
    assert find_latest_model("other", saved_models(runs)) is None


def test_find_latest_image_models_picks_the_newest_of_each_data_set(tmp_path, models):
    """One per data set; a model saved by chainrule 0.1's `digits train` (task "digits", no data
    set recorded) counts as an MNIST model."""
    runs = tmp_path / "runs"
    for name, src, when in (("digits-a", "digits", 1_000_000), ("fashion-a", "fashion", 3_000_000),
                            ("fashion-b", "fashion", 2_000_000), ("spam", "spam", 4_000_000),
                            ("old-digits", "digits", 2_500_000)):
        shutil.copytree(models[src], runs / name)
        if name == "old-digits":
            doc = json.loads((runs / name / "model.json").read_text())
            doc["metadata"]["task"] = "digits"
            del doc["metadata"]["dataset"]
            (runs / name / "model.json").write_text(json.dumps(doc))
        os.utime(runs / name / "model.json", (when, when))
    assert find_latest_image_models(saved_models(runs)) == {"mnist": runs / "old-digits", "fashion": runs / "fashion-a"}
    assert find_latest_image_models(saved_models(tmp_path / "nowhere")) == {}


@pytest.fixture
def served_app(monkeypatch) -> list:
    """The apps `chainrule serve` hands uvicorn, caught there: serve returns at once, serving nothing."""
    apps = []

    def run(server, sockets=None):
        apps.append(server.config.app)
        for sock in sockets or ():
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return apps


def test_serve_passes_over_a_newest_model_whose_weights_are_damaged(tmp_path, models, served_app, capsys):
    """The scan reads model.json and the weights' headers, not the arrays: a newest model with a bad
    CRC in its weights, or NaN weights, stopped `serve` with an error, a good older one beside it.
    A model named on the command line is still refused."""
    runs = tmp_path / "runs"
    for task in ("digits", "fashion", "spam"):
        shutil.copytree(models[task], runs / task / "older")
        os.utime(runs / task / "older" / "model.json", (1_000_000, 1_000_000))
        shutil.copytree(models[task], runs / task / "newer")
        weights = model_files(runs / task / "newer")["model"]
        if task == "fashion":
            with np.load(weights) as npz:
                arrays = dict(npz)
            arrays["params"][0] = np.nan
            np.savez(weights, **arrays)
        else:  # as a bad disk leaves it: the middle 50 bytes of the arrays changed
            raw = bytearray(weights.read_bytes())
            middle = len(raw) // 2
            raw[middle:middle + 50] = bytes(255 - b for b in raw[middle:middle + 50])
            weights.write_bytes(bytes(raw))
    assert main(["serve", "--runs", str(runs), "--port", "0"]) == 0
    err = capsys.readouterr().err
    state = served_app[0].state
    assert state.images["mnist"].service.path == runs / "digits" / "older"
    assert state.digits is state.images["mnist"]
    assert state.images["fashion"].service.path == runs / "fashion" / "older"
    assert state.spam.service.path == runs / "spam" / "older"
    for task in ("digits", "fashion", "spam"):
        assert f"passed over {runs / task / 'newer'}:" in err, task
    assert "Bad CRC-32" in err and "NaN" in err
    for option, task in (("--digits", "digits"), ("--images", "fashion"), ("--spam", "spam")):
        assert main(["serve", "--runs", str(tmp_path / "no-runs"), option, str(runs / task / "newer"),
                     "--port", "0"]) == 2, option
        assert "chainrule: error:" in capsys.readouterr().err
    assert len(served_app) == 1


def test_serve_checks_the_host_only_where_it_listens_on_this_machine_alone(models, served_app):
    """Bound to a loopback address, a request must name this machine (a DNS-rebinding page names its
    own site); listening on the network, the names it is reached by are not known, and any goes."""
    for host, allowed in (("127.0.0.1", False), ("localhost", False), ("::1", False), ("127.0.0.2", False),
                          ("0.0.0.0", True)):
        assert main(["serve", "--digits", str(models["digits"]), "--host", host, "--port", "0"]) == 0, host
        shown = f"[{host}]" if ":" in host else host
        with TestClient(served_app.pop(), base_url=f"http://{shown}:8000") as c:
            assert c.get("/healthz").status_code == 200, host
            r = c.get("/api/models", headers={"Host": "attacker.example"})
            assert r.status_code == (200 if allowed else 400), (host, r.text)


def test_serve_without_models_says_how_to_train(tmp_path, capsys):
    assert main(["serve", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chainrule: error:") and err.count("\n") == 1
    assert "chainrule digits train" in err and "chainrule images train" in err and "chainrule spam train" in err


def test_serve_refuses_a_log_level_it_does_not_know(models, capsys, served_app, monkeypatch):
    """CHAINRULE_LOG_LEVEL=verbose gave "internal error (KeyError: 'verbose')", after the page's address."""
    monkeypatch.setenv("CHAINRULE_LOG_LEVEL", "verbose")
    assert main(["serve", "--digits", str(models["digits"]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == ("chainrule: error: CHAINRULE_LOG_LEVEL='verbose': expected one of critical, error, warning, "
                   "info, debug, trace\n") and not served_app
    monkeypatch.setenv("CHAINRULE_LOG_LEVEL", "INFO")
    assert main(["serve", "--digits", str(models["digits"]), "--port", "0"]) == 0


def test_serve_refuses_bad_arguments_in_one_line(tmp_path, models, capsys, served_app):
    cases = [
        ["--digits", str(tmp_path / "missing")],
        ["--digits", str(models["spam"])],
        ["--spam", str(models["digits"])],
        ["--images", str(models["spam"])],
        ["--images", str(tmp_path / "missing")],
        ["--images", f"x={models['fashion']}", "--images", f"x={models['digits']}"],
        ["--images", f"..={models['fashion']}"],  # (browsers read /api/images/../predict as /api/predict)
        ["--images", f".={models['fashion']}"],
        ["--images", "name="],  # (the current folder: "name=$DIR" with DIR unset)
        ["--digits", str(models["digits"]), "--max-body-mb", "0"],
        ["--digits", str(models["digits"]), "--max-body-mb", "1e308"],  # (an internal error: no int is that many bytes)
        ["--digits", str(models["digits"]), "--max-body-mb", "1025"],
        ["--digits", str(models["digits"]), "--max-body-mb", "0.0000001"],  # (0 bytes: every request got 413)
        ["--digits", str(models["digits"]), "--port", "70000"],
        ["--digits", str(models["digits"]), "--reload-interval", "-1"],
        ["--digits", str(models["digits"]), "--reload-interval", "nan"],
        ["--digits", str(models["fashion"])],  # the digits route answers with a digit
    ]
    for args in cases:
        assert main(["serve", "--runs", str(tmp_path / "no-runs"), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("chainrule: error:") and err.count("\n") == 1, err
        assert "internal error" not in err, err
    assert not served_app
    for mb, limit in (("1024", 1 << 30), ("0.000001", 1)):  # the largest limit, and one byte
        assert main(["serve", "--digits", str(models["digits"]), "--max-body-mb", mb, "--port", "0"]) == 0
        middleware = served_app.pop().user_middleware
        assert [m.kwargs["max_bytes"] for m in middleware if m.cls is BodyLimitMiddleware] == [limit]
    assert main(["serve", "--digits", str(models["digits"]), "--reload-interval", "0.5", "--port", "0"]) == 0
    assert served_app.pop().state.digits.interval == 0.5
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--digits", str(models["digits"]), "--spam", str(models["spam"]),
                     "--port", str(port)]) == 2
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


# -- models changed on disk ---------------------------------------------------------------------------


def test_a_model_changed_on_disk_is_served_at_the_next_request(tmp_path, models, samples, capsys):
    """`serve` answered with the models it loaded at start whatever became of their folders: after
    `spam learn` and a new model saved over the digits one it gave the old answers, and /api/models
    the old metrics and paths, with no word in the log. A model's files are looked at (at most
    every `reload_interval` seconds) at a request that uses it, and a changed model is loaded again."""
    digits, spam = tmp_path / "digits", tmp_path / "spam"
    shutil.copytree(models["digits"], digits)
    shutil.copytree(models["spam"], spam)
    sms = tmp_path / "sms.txt"
    sms.write_text(next(text for label, text in sms_messages() if label == "spam") + "\n", encoding="utf-8")
    png = as_upload(samples[0][0])
    with TestClient(create_app(digits, spam, reload_interval=0.01)) as c:
        def answers() -> tuple[dict, dict, dict]:
            time.sleep(0.02)  # (past the interval: the next request looks)
            verdict = c.post("/api/spam/classify", content=sms.read_bytes(), headers={"Content-Type": "text/plain"})
            digit = c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"})
            assert verdict.status_code == digit.status_code == 200, (verdict.text, digit.text)
            return verdict.json(), digit.json(), c.get("/api/models").json()

        verdict, digit, listed = answers()
        # the user teaches the filter that this SMS is ham, with the real command (which also sends
        # the log's lines, the server's among them, to standard error)
        assert main(["spam", "learn", str(spam), "--ham", "--sms", str(sms)]) == 0
        # and a retrained digits model is saved into the same folder (its last layer's weights
        # scaled, so that its probabilities differ), with metrics of its own
        model, metadata = chainrule.load_model(digits)
        last = [layer for layer in model.layers if "weight" in layer.params][-1]
        last.params["weight"].data *= 3
        model.save(digits, {**metadata, "test_accuracy": 0.5})
        new_verdict, new_digit, new_listed = answers()
        learned = spam_app.classify_message(spam_app.load_spam_model(spam), sms.read_bytes(), top=TOP_TOKENS)
        assert new_verdict["probability"] == pytest.approx(learned["probability"], abs=1e-6)
        assert abs(new_verdict["probability"] - verdict["probability"]) > 1e-3
        image = preprocess_image(png, "digit")
        expected = model.predict_proba(image_presets.model_inputs(image[None], metadata))[0]
        assert new_digit["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert new_digit["probabilities"] != pytest.approx(digit["probabilities"], abs=1e-3)
        assert listed["digits"]["metrics"]["test_accuracy"] != 0.5
        assert new_listed["digits"]["metrics"]["test_accuracy"] == 0.5
        assert new_listed["images"][0]["metrics"]["test_accuracy"] == 0.5
        assert new_listed["spam"]["metadata"] != listed["spam"]["metadata"]
        reloads = [line for line in capsys.readouterr().err.splitlines() if "reloaded" in line]
        assert sorted(reloads) == [f"chainrule serve: image model mnist {digits} changed on disk: reloaded",
                                   f"chainrule serve: spam model {spam} changed on disk: reloaded"], reloads


def test_each_answer_names_the_model_loading_that_gave_it(tmp_path, models, samples):
    """A page that read /api/models before a model was reloaded labelled the new model's answers with
    the old one's class names (a digits model copied over the clothes one: "1" shown, and the top bar
    "Trouser"), for an answer said only its label and probabilities. Each answer carries the
    `model_version` that /api/models gives the model that answered; a reload changes both."""
    clothes, spam = tmp_path / "clothes", tmp_path / "spam"
    shutil.copytree(models["fashion"], clothes)
    shutil.copytree(models["spam"], spam)
    png = as_upload(samples[0][0])
    sms = sms_messages()[0][1].encode()
    with TestClient(create_app(images=[clothes], spam=spam, reload_interval=0.01)) as c:
        def versions() -> tuple[str, str, dict]:
            time.sleep(0.02)  # (past the interval: the next request looks)
            image = c.post("/api/images/fashion/predict", content=png, headers={"Content-Type": "image/png"})
            verdict = c.post("/api/spam/classify", content=sms, headers={"Content-Type": "text/plain"})
            assert image.status_code == verdict.status_code == 200, (image.text, verdict.text)
            return image.json()["model_version"], verdict.json()["model_version"], c.get("/api/models").json()

        image, verdict, listed = versions()
        assert image == listed["images"][0]["model_version"] and verdict == listed["spam"]["model_version"]
        assert versions() == (image, verdict, listed)  # (the same files, the same version)
        for f in clothes.iterdir():  # the digits model copied over the clothes one, as `cp` does
            f.unlink()
        for f in sorted(models["digits"].iterdir(), key=lambda f: f.name == "model.json"):
            shutil.copy(f, clothes)
        bundle = spam_app.load_spam_model(spam)  # and the filter's cut-offs changed
        bundle.metadata["cutoffs"] = {"spam": 0.9, "ham": 0.2}
        spam_app.save_model(bundle, spam)
        new_image, new_verdict, new_listed = versions()
        assert new_image == new_listed["images"][0]["model_version"] != image
        assert new_listed["images"][0]["classes"] == [str(k) for k in range(10)]
        assert new_verdict == new_listed["spam"]["model_version"] != verdict
        assert new_listed["spam"]["cutoffs"] == {"spam": 0.9, "ham": 0.2}


def test_requests_during_reloads_each_get_one_model_whole(tmp_path, models, samples):
    """Requests answered while the model is saved over again and again, and reloaded as often, each
    get the answer of one model, whole (the one before or the one after), never a mix or an error."""
    digits = tmp_path / "digits"
    shutil.copytree(models["digits"], digits)
    png = as_upload(samples[0][0])
    x = image_presets.model_inputs(preprocess_image(png, "digit")[None], chainrule.load_model(digits)[1])
    (a, metadata), (b, _) = chainrule.load_model(digits), chainrule.load_model(digits)
    [layer for layer in b.layers if "weight" in layer.params][-1].params["weight"].data *= 3
    expected = [m.predict_proba(x)[0] for m in (a, b)]
    stop = threading.Event()

    def save_again_and_again():
        for i in range(10_000):
            if stop.is_set():
                return
            (a, b)[i % 2].save(digits, metadata)

    with TestClient(create_app(digits, reload_interval=0.001)) as c:
        saver = threading.Thread(target=save_again_and_again)
        saver.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: c.post("/api/digits/predict", content=png,
                                                         headers={"Content-Type": "image/png"}), range(80)))
        finally:
            stop.set()
            saver.join()
    assert [r.status_code for r in answers] == [200] * len(answers)
    seen = set()
    for r in answers:
        got = r.json()["probabilities"]
        which = [i for i, e in enumerate(expected) if got == pytest.approx(e.tolist(), abs=1e-5)]
        assert len(which) == 1, got
        seen.add(which[0])
    assert seen == {0, 1}  # (both models answered: the reloads happened)


def test_a_model_whose_folder_is_gone_is_still_served_with_one_warning(tmp_path, models, samples, caplog):
    """As the spam daemon does: a model that cannot be loaded again (its folder deleted, copied in
    without its weights yet, another kind of model saved there) is reported once, and the one loaded
    before goes on answering; once its folder holds a model again, that one is served. (The folder
    deleted, the server answered with the old model without a word.)"""
    digits = tmp_path / "digits"
    shutil.copytree(models["digits"], digits)
    png = as_upload(samples[0][0])

    def warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "chainrule.web.services"]
        caplog.clear()
        return found

    caplog.set_level(logging.WARNING, logger="chainrule.web.services")
    with TestClient(create_app(digits, reload_interval=0.01)) as c:
        def predict() -> dict:
            time.sleep(0.02)  # (past the interval: the next request looks)
            r = c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            return r.json()

        first = predict()
        shutil.rmtree(digits)
        assert [predict(), predict(), predict()] == [first] * 3
        said = warnings()
        assert len(said) == 1 and f"image model mnist {digits} changed on disk and cannot be loaded" in said[0] \
            and "still serving the model loaded before" in said[0], said
        # a new model copied in file by file, model.json first: served once its weights are there too
        new = tmp_path / "new"
        model, metadata = chainrule.load_model(models["digits"])
        model.save(new, {**metadata, "test_accuracy": 0.25})
        digits.mkdir()
        shutil.copy(new / "model.json", digits)
        assert [predict(), predict()] == [first] * 2
        said = warnings()
        assert len(said) == 1 and "not found" in said[0], said
        for f in new.glob("*.npz"):
            shutil.copy(f, digits)
        predict()
        assert c.get("/api/models").json()["digits"]["metrics"]["test_accuracy"] == 0.25
        assert not warnings()
        # the digits route answers with a digit: a model of clothes saved there is not put in its place
        shutil.rmtree(digits)
        shutil.copytree(models["fashion"], digits)
        assert predict()["probabilities"] == pytest.approx(first["probabilities"], abs=1e-5)
        said = warnings()
        assert len(said) == 1 and "now a model of Fashion-MNIST, not of digits" in said[0], said
    # with reload_interval 0 (`serve --reload-interval 0`) the model loaded at start stays
    with TestClient(create_app(images=[digits], reload_interval=0)) as c:
        shutil.rmtree(digits)
        model.save(digits, {**metadata, "test_accuracy": 0.125})
        time.sleep(0.02)
        assert c.get("/api/models").json()["images"][0]["dataset"] == "fashion"


def test_a_model_that_runs_out_of_memory_as_it_loads_is_one_that_cannot_be_loaded(
        tmp_path, models, samples, served_app, capsys, monkeypatch):
    """An image model is checked as it loads by a pass on a blank image, which may need more memory
    than the machine has (a model file asking 95 GiB of it, say). The MemoryError was caught by
    neither `serve --runs`, which stopped ("out of memory") where it passes over any other model
    that cannot be loaded, nor a reload: once such a model was saved over a served one, every
    prediction and /api/models was a plain-text 500."""
    hungry = set()  # (the folders whose models run out of memory as they load)
    load = services.load_image_model

    def load_image_model(path):
        if path in hungry:
            raise MemoryError("Unable to allocate 95.4 GiB for an array with shape (1, 160028, 160028, 1) and "
                              "data type float32")
        return load(path)

    monkeypatch.setattr(services, "load_image_model", load_image_model)
    runs = tmp_path / "runs"
    shutil.copytree(models["digits"], runs / "older")
    os.utime(runs / "older" / "model.json", (1_000_000, 1_000_000))
    shutil.copytree(models["digits"], runs / "newer")
    hungry.add(runs / "newer")
    assert main(["serve", "--runs", str(runs), "--port", "0"]) == 0
    assert served_app[0].state.images["mnist"].service.path == runs / "older"
    assert f"passed over {runs / 'newer'}: Unable to allocate 95.4 GiB" in capsys.readouterr().err

    digits = runs / "older"
    png = as_upload(samples[0][0])
    with TestClient(create_app(digits, reload_interval=0.01)) as c:
        first = c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"}).json()
        hungry.add(digits)
        os.utime(digits / "model.json")  # (saved again)
        time.sleep(0.02)  # (past the interval: the next request looks)
        r = c.post("/api/digits/predict", content=png, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json() == first, r.text
        assert c.get("/api/models").json()["digits"]["path"] == str(digits)
    said = [line for line in capsys.readouterr().err.splitlines() if "cannot be loaded" in line]
    assert len(said) == 1 and "cannot be loaded (Unable to allocate 95.4 GiB" in said[0] \
        and "still serving the model loaded before" in said[0], said


def test_every_image_model_served_decodes_on_the_same_few_threads(models):
    """Each model had a pool of MAX_PARALLEL_DECODES threads of its own: with 3 models served, 24
    large uploads at once took the server's memory from 899 MB (one model) to 2,476 MB."""
    digits, clothes = ImageService.load(models["digits"]), ImageService.load(models["fashion"])
    assert digits.decoder is clothes.decoder
    assert digits.decoder._max_workers == MAX_PARALLEL_DECODES
