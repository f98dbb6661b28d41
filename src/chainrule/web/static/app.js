// chainrule web page: draws on a canvas, asks the JSON API, renders what comes back.
// Plain browser JavaScript, no dependencies and no build step.
"use strict";

const $ = (id) => document.getElementById(id);

// -- colour maps -------------------------------------------------------------------------------
// Non-negative activations (after ReLU, pooling) use a sequential map, black -> yellow; signed
// values (raw scores, weights) a diverging one, blue < 0 < red, with white at zero.
const SEQUENTIAL = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

function colour(stops, t) {
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t));
  const f = t - i;
  const a = stops[i], b = stops[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

// Paint `values` (row-major, `rows` x `cols`) into a canvas of that many pixels; CSS scales it up.
// `scale` is the value mapped to the end of the colour map; signed data is centred on zero.
function paint(canvas, values, rows, cols, signed, scale) {
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  const s = scale > 0 ? scale : 1;
  for (let k = 0; k < rows * cols; k++) {
    let rgb = [236, 236, 234]; // padding cells beyond the last unit
    if (k < values.length) {
      rgb = signed ? colour(DIVERGING, 0.5 + values[k] / (2 * s)) : colour(SEQUENTIAL, values[k] / s);
    }
    img.data[4 * k] = rgb[0];
    img.data[4 * k + 1] = rgb[1];
    img.data[4 * k + 2] = rgb[2];
    img.data[4 * k + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function maxAbs(values) {
  let m = 0;
  for (const v of values) m = Math.max(m, Math.abs(v));
  return m;
}

const percent = (p) => `${(100 * p).toFixed(p > 0.999 || p < 0.001 ? 2 : 1)}%`;

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

// A server that hangs must not leave the page waiting for ever: 30 s for the answer, and time to
// send the body besides (a 5 MB photo over a slow phone link takes a minute and more).
const ANSWER_TIMEOUT_MS = 30000;
const SLOWEST_UPLOAD_BYTES_PER_MS = 25; // 25 kB/s

async function postJSON(url, body, contentType) {
  const size = body.size ?? body.length ?? 0;
  const limit = ANSWER_TIMEOUT_MS + size / SLOWEST_UPLOAD_BYTES_PER_MS;
  const abort = new AbortController(); // (not AbortSignal.timeout: Safari before 16 has none)
  const timer = setTimeout(() => abort.abort(), limit);
  let response;
  try {
    response = await fetch(url, { method: "POST", headers: { "Content-Type": contentType }, body,
                                  signal: abort.signal });
  } catch (err) {
    if (abort.signal.aborted) throw new Error(`no answer from the server within ${Math.round(limit / 1000)} s`);
    // fetch fails with a TypeError when no answer can come at all (the server stopped, the network
    // down), in each browser's own words: "Failed to fetch", "NetworkError when attempting to
    // fetch resource.", "Load failed"
    if (err instanceof TypeError) throw new Error("cannot reach the server (is chainrule serve still running?)");
    throw err;
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error : `the server answered ${response.status}`);
    error.status = response.status; // (a 404 from an image model: the server no longer serves it)
    throw error;
  }
  return data;
}

// What the page says of a failed request: a body over serve's limit (413) is said with its size and
// what sets the limit, the server's answer saying only the limit.
function failure(err, what, bytes) {
  if (err.status !== 413) return err.message;
  return `${err.message}; this ${what} is ${bytes.toLocaleString("en")} bytes (chainrule serve --max-body-mb sets the limit)`;
}

// -- models ------------------------------------------------------------------------------------

let imageModels = []; // every image model, as /api/models describes it (name, classes, picture, ...)
let spamModel = null; // the spam model, as /api/models describes it (its cut-offs colour the meter)
let current = null; // the image model the picker chose

function describeModel(label, info) {
  const parts = [];
  const metrics = info.metrics || {};
  for (const [name, value] of Object.entries(metrics)) {
    if (typeof value !== "number" || parts.length >= 2) continue;
    parts.push(`${name.replace(/_/g, " ")} ${value >= 0 && value <= 1 ? percent(value) : value.toPrecision(4)}`);
  }
  const size = `${info.num_parameters.toLocaleString()} parameters`;
  return `${label}: ${info.path} (${[size, ...parts].join(", ")})`;
}

function showMissing(kind, hint) {
  const box = $(`${kind}-missing`);
  box.hidden = false;
  box.textContent = `No ${kind === "images" ? "image" : kind} model is loaded: ${hint}.`;
}

function pickerText(info) {
  const accuracy = (info.metrics || {}).test_accuracy;
  const preset = info.metadata.preset ? ` ${info.metadata.preset}` : "";
  return `${info.dataset_title}${preset}${typeof accuracy === "number" ? ` (${percent(accuracy)})` : ""}`;
}

// Ask the server which models it serves and show them: the header's line, the picker, the meter's
// cut-offs. Asked again when an answer comes from a model reloaded since (its model_version differs).
async function fetchModels() {
  const response = await fetch("/api/models");
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const models = await response.json();
  imageModels = models.images;
  spamModel = models.spam;
  const lines = imageModels.map((info) => describeModel(info.name, info));
  if (spamModel) {
    lines.push(describeModel("spam", spamModel));
    // The meter's colours follow the model's own cut-offs: green below ham, amber unsure, red spam.
    const cut = spamModel.cutoffs || {};
    if (typeof cut.ham === "number" && typeof cut.spam === "number") {
      $("spam-meter").low = cut.ham;
      $("spam-meter").high = cut.spam;
    }
  }
  $("models").textContent = lines.length ? lines.join(" · ") : "No models loaded.";
  $("image-model").replaceChildren(...imageModels.map((info) => el("option", { value: info.name }, pickerText(info))));
  if (current !== null) showServed(current, models.hints.images);
  return models;
}

// After the models were asked for again: the section shows the model the picker chose as the server
// now describes it (reloaded: its classes, its title), or, if it is no longer served, another one.
function showServed(chosen, hint) {
  const now = imageModels.find((info) => info.name === chosen.name);
  if (now === undefined && imageModels.length) {
    chooseModel(imageModels[0].name);
    $("images-error").hidden = false;
    $("images-error").textContent = `The server no longer serves the image model "${chosen.name}"; `
      + `this is "${imageModels[0].name}".`;
  } else if (now === undefined) {
    current = null;
    noImageModel(hint);
  } else {
    current = now;
    $("image-model").value = now.name;
    if (now.model_version !== chosen.model_version) {
      showModel();
      resetPrediction(); // (the answer shown came from the model as it was)
    }
  }
}

function noImageModel(hint) {
  $("picker").hidden = true;
  showMissing("images", hint);
  $("clear").disabled = true;
  $("upload").disabled = true;
}

async function loadModels() {
  try {
    const models = await fetchModels();
    if (!models.spam) showMissing("spam", models.hints.spam);
    if (imageModels.length) {
      $("picker").hidden = false;
      chooseModel(imageModels[0].name);
    } else {
      noImageModel(models.hints.images);
    }
    if (!models.spam) $("check").disabled = true;
  } catch (err) {
    $("models").textContent = `Could not ask the server which models are loaded: ${err.message}`;
  }
}

// An answer from a model reloaded since the page last asked (a retrain, a model copied over it) is
// shown with that model's description: its classes, its cut-offs. `described()` gives the page's
// description of the model the answer came from, once the models are asked for again if need be.
async function describedAs(result, described) {
  if (described()?.model_version !== result.model_version) await fetchModels();
  if (described()?.model_version !== result.model_version) {
    throw new Error("the model was reloaded on the server as it answered; try again");
  }
}

const isDigits = (classes) => classes.length === 10 && classes.every((c, k) => c === String(k));
const drawable = () => current !== null && current.picture !== "object";

// Switch the section to another image model: its class names, and a drawing pad for models that
// read drawings like MNIST's digits, or an upload for photos of objects like Fashion-MNIST's.
function chooseModel(name) {
  current = imageModels.find((info) => info.name === name);
  $("image-model").value = name;
  showModel();
  clearPad();
  resetPrediction();
}

// Label the section for the current model (the picture on the pad stays).
function showModel() {
  const title = current.dataset_title;
  const digits = isDigits(current.classes);
  if (drawable()) $("images-title").textContent = digits ? "Draw a digit" : `Draw or upload a picture: ${title}`;
  else $("images-title").textContent = `Upload a photo: ${title}`;
  $("image-classes").textContent = `Classes: ${current.classes.join(", ")}`;
  pad.classList.toggle("upload-only", !drawable());
  pad.setAttribute("aria-label", drawable()
    ? `Drawing area: draw one ${digits ? "digit" : "picture"} with the mouse, a pen or a finger`
    : "The uploaded picture");
  $("upload-label").textContent = drawable()
    ? `Or upload a picture${digits ? " of a digit" : ""}`
    : "Upload a photo of one item on a plain background";
  $("seen-caption").textContent = `What the network sees: 28×28, ${drawable() ? "centred" : "fitted"} like ${title}`;
  buildBars(current.classes);
}

$("image-model").addEventListener("change", () => chooseModel($("image-model").value));

// -- draw a digit, or upload a picture -----------------------------------------------------------

const pad = $("pad");
const padCtx = pad.getContext("2d");
const PAD = 280; // the pad's side in the units strokes are drawn in (CSS pixels on a desktop)
let stroke = null; // the pointer drawing the stroke: a second finger on the pad is not part of it
let last = null;
let hasInk = false;
let picture = 0; // counts pictures: Clear, an upload or another model starts a new one
let pending = 0; // requests on their way
let again = false; // strokes drawn while a request was on its way: send the pad once more

// A new, empty picture: answers still on their way are about the old one and will be dropped.
// The canvas is sized anew, a pixel for each of the screen's (devicePixelRatio: 2 or 3 on phones),
// so that strokes are sharp, not 280 pixels stretched; what is drawn stays in PAD units. (Past 3 the
// eye sees no difference, and the PNG sent for each stroke grows.)
function clearPad() {
  const scale = Math.min(3, Math.max(1, window.devicePixelRatio || 1));
  pad.width = Math.round(PAD * scale); // (setting the size also empties the canvas)
  pad.height = pad.width;
  padCtx.setTransform(pad.width / PAD, 0, 0, pad.height / PAD, 0, 0);
  padCtx.fillStyle = "#fff";
  padCtx.fillRect(0, 0, PAD, PAD);
  hasInk = false;
  again = false;
  stroke = null;
  picture++;
}

function padPoint(event) {
  // The pad is PAD units a side but may be shown smaller (phones): map CSS pixels to those units.
  const rect = pad.getBoundingClientRect();
  return [(event.clientX - rect.left) * (PAD / rect.width), (event.clientY - rect.top) * (PAD / rect.height)];
}

function strokeTo(point) {
  // About a tenth of the pad: the thickness of an MNIST pen stroke once the digit is scaled to 20 px.
  padCtx.lineWidth = PAD * 0.075;
  padCtx.lineCap = "round";
  padCtx.lineJoin = "round";
  padCtx.strokeStyle = "#000";
  padCtx.beginPath();
  padCtx.moveTo(last[0], last[1]);
  padCtx.lineTo(point[0], point[1]);
  padCtx.stroke();
  last = point;
  hasInk = true;
}

pad.addEventListener("pointerdown", (event) => {
  if (!drawable() || stroke !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  stroke = event.pointerId;
  last = padPoint(event);
  // A tap leaves a dot (a line of length 0 draws nothing in some browsers).
  padCtx.fillStyle = "#000";
  padCtx.beginPath();
  padCtx.arc(last[0], last[1], PAD * 0.0375, 0, 2 * Math.PI);
  padCtx.fill();
  hasInk = true;
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== stroke) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) strokeTo(padPoint(e));
  predict();
});

function endStroke(event) {
  if (event.pointerId !== stroke) return;
  stroke = null;
  predict();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
pad.addEventListener("lostpointercapture", endStroke); // (a stroke whose end never came must not lock the pad)

// Live updates without flooding the server: one request at a time; strokes drawn while it runs
// are sent as one more request when it returns.
function predict() {
  if (!hasInk || current === null) return;
  if (pending > 0) {
    again = true;
    return;
  }
  again = false;
  sendImage(padPicture());
}

// The pad as a PNG file. toBlob throws where the canvas is not the page's to read (a picture from
// elsewhere drawn on it) and gives null where the browser cannot encode it: either way the promise
// fails with the reason, which the page shows, and the wait for an answer ends.
function padPicture() {
  return new Promise((done, fail) => pad.toBlob(
    (blob) => (blob ? done(blob) : fail(new Error("the browser could not encode the drawing"))), "image/png"));
}

// Ask for the prediction of one picture, `file`: a Blob, or the promise of one (the pad encoded, a
// photo made smaller). Only the answer about the picture on the pad now is shown.
async function sendImage(file, asked = picture, model = current.name) {
  pending++;
  // aria-busy tells assistive technology (and the browser test) that an answer is on its way.
  $("answer").setAttribute("aria-busy", "true");
  const url = `/api/images/${encodeURIComponent(model)}/predict?explain=true`;
  let body = null;
  try {
    body = await file;
    if (asked !== picture) return; // cleared, replaced or another model meanwhile: nothing to ask
    const result = await postJSON(url, body, body.type || "application/octet-stream");
    if (asked !== picture) return; // cleared, replaced or another model since it was sent
    await describedAs(result, () => imageModels.find((info) => info.name === model));
    if (asked !== picture) return; // (the models asked for again: this one no longer served)
    $("images-error").hidden = true;
    showPrediction(result);
  } catch (err) {
    // No such model: it was served when the page asked, and is no longer (its folder removed, serve
    // started again without it). The models are asked for again, and the picker shows those served.
    if (err.status === 404) await fetchModels().catch(() => {});
    if (asked !== picture) return;
    resetPrediction(); // the last answer was for another picture
    $("images-error").hidden = false;
    $("images-error").textContent = failure(err, "picture", body?.size);
  } finally {
    pending--;
    if (pending === 0 && again) predict(); // (it sends only with ink on the pad and a model to ask)
    if (pending === 0) $("answer").setAttribute("aria-busy", "false");
  }
}

function buildBars(classes) {
  const list = $("probs");
  list.style.setProperty("--label-width", `${Math.max(1.5, ...classes.map((c) => c.length))}ch`);
  list.replaceChildren(...classes.map((name, k) => {
    const item = el("li", { id: `prob-${k}` });
    item.append(el("span", { class: "label" }, name));
    const track = el("span", { class: "track", "aria-hidden": "true" });
    track.append(el("span", { class: "fill" }));
    item.append(track);
    item.append(el("span", { class: "value" }, "–"));
    return item;
  }));
}

function resetPrediction() {
  $("label").textContent = "–";
  $("label").classList.remove("name");
  $("confidence").textContent = "";
  (current ? current.classes : []).forEach((name, k) => {
    const item = $(`prob-${k}`);
    item.classList.remove("top");
    item.querySelector(".fill").style.width = "0";
    item.querySelector(".value").textContent = "–";
    item.setAttribute("aria-label", `${name}: no prediction yet`);
  });
  const seen = $("seen").getContext("2d");
  seen.clearRect(0, 0, 28, 28);
  const ask = drawable() ? "Draw a digit or upload a picture" : "Upload a picture";
  $("layers").replaceChildren(el("p", { class: "empty" }, `${ask} to see the activations.`));
  $("units").replaceChildren(el("p", { class: "empty" }, `${ask} to see them.`));
  $("images-error").hidden = true;
}

function showPrediction(result) {
  $("label").textContent = result.label;
  $("label").classList.toggle("name", result.label.length > 2);
  $("confidence").textContent = percent(result.probabilities[result.index]);
  result.probabilities.forEach((p, k) => {
    const item = $(`prob-${k}`);
    item.classList.toggle("top", k === result.index);
    item.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    item.querySelector(".value").textContent = percent(p);
    item.setAttribute("aria-label", `${current.classes[k]}: ${percent(p)}`);
  });
  // The network's input is MNIST-style: ink 1 (white), background 0 (black).
  const seen = $("seen").getContext("2d");
  const img = seen.createImageData(28, 28);
  result.input.flat().forEach((v, k) => {
    const g = Math.round(255 * v);
    img.data.set([g, g, g, 255], 4 * k);
  });
  seen.putImageData(img, 0, 0);
  if (result.layers) showLayers(result.layers);
  if (result.top_units) showUnits(result.top_units);
}

function showLayers(layers) {
  const figures = layers.map((layer) => {
    const figure = el("figure", { class: "layer" });
    const signed = layer.values.some((v) => v < 0);
    const scale = maxAbs(layer.values);
    if (layer.shape.length === 3) {
      const [channels, h, w] = layer.shape;
      const more = channels > layer.shown ? ` (first ${layer.shown} shown)` : "";
      figure.append(el("figcaption", {}, `${layer.index}: ${layer.type} · ${channels} feature maps of ${h}×${w}${more}`));
      const maps = el("div", { class: "maps" });
      for (let c = 0; c < layer.shown; c++) {
        const canvas = el("canvas", { role: "img", "aria-label": `feature map ${c}` });
        paint(canvas, layer.values.slice(c * h * w, (c + 1) * h * w), h, w, signed, scale);
        maps.append(canvas);
      }
      figure.append(maps);
    } else {
      const n = layer.values.length;
      const cols = Math.min(n, n <= 256 ? 32 : 64);
      const rows = Math.ceil(n / cols);
      const cell = n <= 16 ? 28 : n <= 256 ? 12 : 8;
      figure.append(el("figcaption", {}, `${layer.index}: ${layer.type} · ${n} units${signed ? " (signed)" : ""}`));
      const canvas = el("canvas", { role: "img", "aria-label": `${layer.type} activations, ${n} units` });
      paint(canvas, layer.values, rows, cols, signed, scale);
      canvas.style.width = `${cols * cell}px`;
      figure.append(canvas);
      if (layer === layers[layers.length - 1] && n === current.classes.length) {
        // The output layer: one cell per class, labelled; names too long for a cell are numbered,
        // with a key below.
        const short = current.classes.every((name) => name.length <= 2);
        const labels = el("div", { class: "cell-labels", "aria-hidden": "true" });
        current.classes.forEach((name, k) => labels.append(el("span", { style: `width:${cell}px`, title: name },
          short ? name : String(k))));
        figure.append(labels);
        if (!short) {
          figure.append(el("p", { class: "cell-key" }, current.classes.map((name, k) => `${k} ${name}`).join(" · ")));
        }
      }
    }
    return figure;
  });
  $("layers").replaceChildren(...figures);
}

function showUnits(units) {
  const figures = units.map((unit) => {
    const figure = el("figure", { class: "unit" });
    const values = unit.weights.flat();
    const canvas = el("canvas", { role: "img", "aria-label": `incoming weights of unit ${unit.unit}` });
    paint(canvas, values, unit.weights.length, unit.weights[0].length, true, maxAbs(values));
    figure.append(canvas);
    figure.append(el("figcaption", {}, `unit ${unit.unit} · ${unit.activation.toFixed(2)}`));
    return figure;
  });
  $("units").replaceChildren(...(figures.length ? figures : [el("p", { class: "empty" }, "This model has no hidden units to show.")]));
}

$("clear").addEventListener("click", () => {
  clearPad();
  resetPrediction();
});

// Photos of more than a megabyte, and pictures of more than 2,000 pixels a side, are sent re-encoded, at
// most 2,000 pixels on their longer side: the network reads 28x28 pixels, a phone's photo of 5 MB and
// more is over serve's limit (5 MB unless --max-body-mb says otherwise) and slow to send over a phone's
// link, and a scan of 8000x8000 pixels in a small file is over the server's limit on pixels
// (data/images.py MAX_PIXELS).
const SHRINK_ABOVE_BYTES = 1024 * 1024;
const SHRUNK_SIDE = 2000;

// A new picture from a file, uploaded or dropped on the pad: the pad is cleared now (an answer about
// the old one is dropped), then shows the file, fitted, on white, and the file is sent, unchanged
// unless large (above). A file the browser cannot read is not sent: the page says so.
function takePicture(file) {
  clearPad();
  resetPrediction();
  const sent = shownAndShrunk(file, picture);
  if (current !== null) sendImage(sent);
}

// Show `file` on the pad, unless another picture has replaced it since (`shown`: its number), and
// give what to send. The pad shows what the browser decodes as a bitmap, upright as a photo's EXIF
// orientation says (createImageBitmap's default; the server turns it so too). Other files leave the
// pad empty and are sent as they are, for the server to read (a TIFF) or refuse: an SVG among them,
// which drawn on the pad would leave it unreadable to the page ("Tainted canvases may not be
// exported") if it holds a <foreignObject>, as draw.io's do.
async function shownAndShrunk(file, shown) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    await readable(file);
    return file;
  }
  try {
    if (shown !== picture) return file; // (another picture since: this one will not be sent)
    const s = Math.min(PAD / bitmap.width, PAD / bitmap.height);
    const w = bitmap.width * s, h = bitmap.height * s;
    padCtx.drawImage(bitmap, (PAD - w) / 2, (PAD - h) / 2, w, h);
    const large = file.size > SHRINK_ABOVE_BYTES || Math.max(bitmap.width, bitmap.height) > SHRUNK_SIDE;
    return large ? await shrunk(bitmap, file) : file;
  } catch {
    return file; // (no memory for a canvas that large, say: the server answers as it can)
  } finally {
    bitmap.close();
  }
}

// `bitmap`, the picture of `file`, re-encoded at most SHRUNK_SIDE pixels a side: as JPEG, or as PNG
// where it has transparent pixels (the server puts a drawing on a transparent background onto white or
// black, whichever shows its ink). The file itself where that is no smaller, in pixels or in bytes.
async function shrunk(bitmap, file) {
  const s = Math.min(1, SHRUNK_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * s));
  canvas.height = Math.max(1, Math.round(bitmap.height * s));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let opaque = true;
  for (let k = 3; k < pixels.length && opaque; k += 4) opaque = pixels[k] === 255;
  const blob = await new Promise((done) => canvas.toBlob(done, opaque ? "image/jpeg" : "image/png", 0.9));
  return blob !== null && (s < 1 || blob.size < file.size) ? blob : file;
}

// A file the browser cannot read (a folder dropped, a file moved or removed since it was picked) makes
// fetch fail as no server answering does: it is said to be no picture, and not sent. (Its first byte is
// read: a folder or a file gone fails there.)
async function readable(file) {
  try {
    await file.slice(0, 1).arrayBuffer();
  } catch {
    throw new Error(`"${file.name}" cannot be read as a picture (a folder, or a file moved or removed since)`);
  }
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (file) takePicture(file);
  $("upload").value = "";
});

// A file dropped on the pad is taken as the upload button takes one. Dropped anywhere else, the
// browser would open it in the tab in place of the page (a message typed in lost): refused there.
// Drags of text (into the message box) are left to the browser.
const acceptsDrop = (event) => event.target === pad && !$("upload").disabled;
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = acceptsDrop(event) ? "copy" : "none";
    pad.classList.toggle("dropping", acceptsDrop(event));
  });
}
pad.addEventListener("dragleave", () => pad.classList.remove("dropping"));
document.addEventListener("drop", (event) => {
  if (!event.dataTransfer?.types.includes("Files")) return;
  event.preventDefault();
  pad.classList.remove("dropping");
  if (acceptsDrop(event) && event.dataTransfer.files.length) takePicture(event.dataTransfer.files[0]);
});

// -- check a message ---------------------------------------------------------------------------

// The classifier's tokens may carry a tag: the header they were read from ("subject:free",
// "return-path:ro"), or what the word is in the text ("upper:free", in capitals). A header's token is
// highlighted in that header's lines only: the same word in the body is another token, with a weight of
// its own; a body's token in the body only. Tags of things the text does not spell out (has:html, num:d11, attach:pdf) are left to the chips.
const TEXT_TAGS = new Set(["upper", "punct", "url"]);

// Where a token is highlighted: { header: name or null for anywhere, word }, or null for nowhere.
function placeOf(token, headers) {
  const m = /^([a-z0-9-]{1,40}):(.+)$/i.exec(token);
  if (!m) return { header: null, word: token };
  const tag = m[1].toLowerCase();
  if (TEXT_TAGS.has(tag)) return { header: null, word: m[2] };
  if (!headers.has(tag)) return null;
  const inner = /^([a-z]+):(.+)$/i.exec(m[2]); // (a subject's own capitals: "subject:upper:free")
  return { header: tag, word: inner && TEXT_TAGS.has(inner[1].toLowerCase()) ? inner[2] : m[2] };
}

// Where the server read an email's header fields: { headers: header name -> [start, end) of each of
// its fields, folded lines included; body: where the body starts }. `count` is the answer's
// header_lines, how many lines of the text (0 for an SMS) it read as the header block, the blank
// line after it included: the page does not guess where that ends ("URGENT: call now" is an SMS).
// Lines end at "\r\n", "\r" or "\n", as the server splits them.
function headerBlock(text, count) {
  const headers = new Map();
  const lineEnd = /\r\n|\r|\n/g;
  let at = 0, name = null;
  for (let k = 0; k < count && at < text.length; k++) {
    lineEnd.lastIndex = at;
    const found = lineEnd.exec(text);
    const end = found ? found.index : text.length;
    const line = text.slice(at, end);
    const field = /^([!-9;-~]+):/.exec(line);
    if (field) {
      name = field[1].toLowerCase();
      if (!headers.has(name)) headers.set(name, []);
      headers.get(name).push([at, end]);
    } else if (name !== null && /^[ \t]/.test(line)) { // (a folded line, blank ones too)
      const fields = headers.get(name);
      fields[fields.length - 1][1] = end;
    } else {
      name = null; // (an mbox "From " line, or the blank line)
    }
    at = found ? found.index + found[0].length : text.length;
  }
  return { headers, body: at };
}

const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

// The server reads text beyond ASCII as a reader sees it (text.py's word_tokens): in NFKC, without the
// characters that show nothing, case-folded, and Chinese and Japanese as overlapping pairs of characters.
// So a token is often not the text as written: "ＦＲＥＥ" gives "free", "Straße" "strasse", "V\u200biagra"
// (a zero-width space inside) "viagra", "发票代开" "发票", "票代" and "代开". The page reads the text the same way
// (`readingOf`) and finds the tokens there, keeping where each character read was written.

// What text.py's _UNSEEN_RE takes out (zero-width characters, soft hyphen, ™ and ℠), and its _CJK: Han,
// Hiragana and Katakana, whose runs it reads as pairs of characters.
const UNSEEN = /[\u200b-\u200d\u2060\ufeff\u00ad\u2120\u2122]/g;
const CJK = "\u3005-\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
  + "\u4e00-\u9fff\uf900-\ufaff\u{20000}-\u{3ffff}";
const CJK_RUN = new RegExp(`[${CJK}]+`, "gu");
const ALL_CJK = new RegExp(`^[${CJK}]+$`, "u");
const LONE_WORD = new RegExp(`^(?:[${CJK}]|\\p{Extended_Pictographic}\ufe0f?)$`, "u");

// Text as the server reads it. JavaScript has no case folding; its lower case differs from it in "ß" (folded
// "ss") and the final sigma "ς" ("σ"), and would read "İ" as "i" and a combining dot, where the server reads "I".
// Left different, and so unmarked: Greek with a written-under iota ("ᾳ", folded "αι"), Cherokee (folded to
// capitals) and a few old Cyrillic letter forms.
// Applied to the server's tokens too, NFKC puts back together what case folding takes apart ("ǰ").
const fold = (s) => s.replace(UNSEEN, "").normalize("NFKC").replace(/İ/g, "I").toLowerCase()
  .replace(/ß/g, "ss").replace(/ς/g, "σ");

// `text` as the server reads it, a grapheme (a letter and its accents, an emoji and its skin tone) at a time:
// NFKC reads a grapheme as a whole, and a mark should not cut one. { read, from, to }: the code unit read[i]
// was read from text[from[i]:to[i]]; from[read.length] is text.length. (An ASCII character is its lower case,
// without fold's five passes: most mail is ASCII.)
const graphemes = new Intl.Segmenter("en", { granularity: "grapheme" });

function readingOf(text) {
  const pieces = [], from = [], to = [];
  for (const { segment, index } of graphemes.segment(text)) {
    const piece = segment.length === 1 && segment < "\x80" ? segment.toLowerCase() : fold(segment);
    pieces.push(piece);
    for (let k = 0; k < piece.length; k++) {
      from.push(index);
      to.push(index + segment.length);
    }
  }
  from.push(text.length);
  return { read: pieces.join(""), from, to };
}

// The index in `reading.read` of the first character read from text[offset:].
function readIndex(reading, offset) {
  let lo = 0, hi = reading.from.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (reading.from[mid] < offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// A character that continues a word: text.py's \w, less Chinese and Japanese, which the server reads as
// words apart ("点击领取http" gives "http"). (Written without the `v` flag's class subtraction, which older
// browsers lack.)
const WORD_CHAR = `(?:(?![${CJK}])[\\p{L}\\p{M}\\p{N}_])`;

// A pattern matching any of `words` (as `fold` reads them) where it stands as a word of its own.
function wordsPattern(words) {
  const alternatives = [...words]
    .sort((a, b) => b.length - a.length)
    .map((k) => {
      let pattern = escapeRegExp(k).replace(/ /g, "\\s+");
      if (/^[\p{L}\p{N}_]/u.test(k)) pattern = `(?<!${WORD_CHAR})${pattern}`;
      if (/[\p{L}\p{M}\p{N}_]$/u.test(k)) pattern = `${pattern}(?!${WORD_CHAR})`;
      return pattern;
    });
  return new RegExp(alternatives.join("|"), "giu");
}

// The marks of the tokens among `weights` (the server's tokens of Chinese or Japanese) in the runs of
// `part`: [start, end, weight, pairs] in `part`'s code units, `pairs` naming the tokens a mark stands for
// ([token, weight]...) where it is not exactly one of them. The pairs of a run overlap ("发票代开": "发票",
// "票代", "代开"): those that share a character and push the same way make one mark, as the words of a
// phrase would, its title naming each; where two pushing opposite ways share one, the stronger has it. A run
// of one character is a token of its own.
function pairMarks(part, weights) {
  const marks = [];
  const stronger = (a, b) => (b === undefined || (a !== undefined && Math.abs(a) >= Math.abs(b)) ? a : b);
  for (const run of part.matchAll(CJK_RUN)) {
    const chars = [...run[0]];
    const at = [run.index]; // where each character starts in `part`, then where the run ends
    for (const c of chars) at.push(at[at.length - 1] + c.length);
    if (chars.length === 1) {
      if (weights.has(chars[0])) marks.push([at[0], at[1], weights.get(chars[0]), null]);
      continue;
    }
    // pair[k]: the weight of the token chars[k] + chars[k + 1], if it is one; best[k]: the strongest
    // covering chars[k]. A mark is a stretch of characters whose pairs join them, pushing one way.
    const pair = chars.slice(1).map((c, k) => weights.get(chars[k] + c));
    const best = chars.map((_, k) => stronger(pair[k - 1], pair[k]));
    for (let first = 0; first < chars.length; first++) {
      if (best[first] === undefined) continue;
      const sign = Math.sign(best[first]);
      let last = first;
      while (last + 1 < chars.length && Math.sign(best[last + 1]) === sign && Math.sign(pair[last]) === sign) last++;
      const pairs = [];
      for (let k = Math.max(0, first - 1); k <= Math.min(last, chars.length - 2); k++) {
        if (Math.sign(pair[k]) === sign) pairs.push([chars[k] + chars[k + 1], pair[k]]);
      }
      const weight = pairs.reduce((w, p) => stronger(w, p[1]), undefined);
      const whole = pairs.length === 1 && last === first + 1;
      marks.push([at[first], at[last + 1], weight, whole ? null : pairs]);
      first = last;
    }
  }
  return marks;
}

// How much of a message is highlighted: a pasted mailbox of megabytes would be tens of thousands of
// <mark>s, slow to lay out and no help to read. The rest is shown as it is, and the page says so.
const HIGHLIGHT_CHARS = 100000;

// Where the first `count` characters of `text` end, as a string index: JavaScript counts UTF-16
// code units, two for a character beyond U+FFFF (an emoji).
function charactersEnd(text, count) {
  let at = 0;
  for (let k = 0; k < count && at < text.length; k++) at += text.codePointAt(at) > 0xffff ? 2 : 1;
  return at;
}

// A token's word as the weights are looked up: as the server reads text (`fold`), each run of blanks one
// space (the text may have two spaces or a tab where the token has one).
const wordKey = (word) => fold(word).replace(/\s+/g, " ");

// Wrap each occurrence of a top token in <mark>, built as DOM nodes (never as HTML text).
// `headerLines`: the answer's count of the lines it read as an email's header block.
function highlight(text, tokens, headerLines) {
  const { headers, body } = headerBlock(text, headerLines);
  const cut = charactersEnd(text, HIGHLIGHT_CHARS);
  // header name ("" for anywhere) -> { words: Map(word -> weight), pairs: the same for Chinese and Japanese }
  const places = new Map();
  for (const t of tokens) {
    const place = placeOf(t.token, headers);
    // (a word of one letter or a lone "!" is left to the chips; a Chinese character or an emoji is a word)
    if (place === null || (place.word.trim().length < 2 && !LONE_WORD.test(place.word))) continue;
    const where = place.header ?? "";
    if (!places.has(where)) places.set(where, { words: new Map(), pairs: new Map() });
    const key = wordKey(place.word);
    const weights = places.get(where)[ALL_CJK.test(key) ? "pairs" : "words"];
    if (!weights.has(key) || Math.abs(t.weight) > Math.abs(weights.get(key))) weights.set(key, t.weight);
  }
  // The text as the server reads it, to a character past the cut (see below).
  const reading = readingOf(text.slice(0, cut + 2));
  // Every match in the part of the text it belongs to: [start, end, weight, pairs] (`pairMarks`).
  const found = [];
  for (const [where, { words, pairs }] of places) {
    const re = words.size ? wordsPattern(words.keys()) : null;
    const ranges = where === "" ? [[body, cut]] : headers.get(where);
    for (const [start, end] of ranges) {
      if (start >= cut) break;
      // Matched in the range read with a character on either side (two code units: an emoji's two), so
      // that a word running on past the range's end ("freedom" at the cut) is not taken for "free".
      const first = readIndex(reading, start);
      const last = readIndex(reading, Math.min(end, cut));
      const from = Math.max(0, first - 2);
      const part = reading.read.slice(from, last + 2);
      const keep = (i, j, weight, named) => { // part[i:j] as the text written there
        if (from + i >= first && from + j <= last) {
          found.push([reading.from[from + i], reading.to[from + j - 1], weight, named]);
        }
      };
      if (re !== null) {
        re.lastIndex = first - from;
        for (let m = re.exec(part); m !== null && from + m.index + m[0].length <= last; m = re.exec(part)) {
          const weight = words.get(wordKey(m[0]));
          if (weight !== undefined) keep(m.index, m.index + m[0].length, weight, null);
        }
      }
      for (const [i, j, weight, named] of pairs.size ? pairMarks(part, pairs) : []) keep(i, j, weight, named);
    }
  }
  found.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
  const target = $("highlighted");
  const note = $("highlighted-note");
  note.hidden = cut === text.length;
  note.textContent = `Tokens are highlighted in the first ${HIGHLIGHT_CHARS.toLocaleString("en")} characters `
    + "only; the rest of the message is shown as it is.";
  // Appended one by one: replaceChildren(...nodes) passes each node as an argument, and a long
  // message has more of them than the browser's stack holds ("Maximum call stack size exceeded").
  const nodes = document.createDocumentFragment();
  const signed = (w) => `${w > 0 ? "+" : ""}${w.toFixed(3)}`;
  let at = 0;
  for (const [start, end, w, named] of found) {
    if (start < at) continue;
    if (start > at) nodes.append(document.createTextNode(text.slice(at, start)));
    const weights = named ? named.map(([token, weight]) => `${token} ${signed(weight)}`).join(", ") : signed(w);
    nodes.append(el("mark", { class: w > 0 ? "spam" : "ham", title: `${weights} towards ${w > 0 ? "spam" : "ham"}` },
      text.slice(start, end)));
    at = end;
  }
  nodes.append(document.createTextNode(text.slice(at)));
  target.replaceChildren(nodes);
}

function chip(t) {
  // The whole token, tag included: "num:d11" (an 11-digit number) says more than "d11". <bdi> keeps
  // a right-to-left word from pulling its weight to the other side.
  const item = el("li");
  item.append(el("bdi", {}, t.token));
  item.append(el("small", {}, `${t.weight > 0 ? "+" : ""}${t.weight.toFixed(2)}`));
  return item;
}

// The verdict line is a live region on the page from the start, empty until a verdict: screen readers
// announce changes to the live regions they already know, and may say nothing of one that appears
// with its first verdict. The rest of the result is shown with the verdict.
function hideVerdict() {
  $("spam-result").hidden = true;
  $("verdict").textContent = "";
  $("verdict").className = "verdict";
  $("spam-probability").textContent = "";
}

let checking = false; // a message's answer is on its way
let queued = null; // the text submitted last while it was: checked when that answer comes

// One message at a time: a text submitted while an answer is on its way (edited, then Ctrl+Enter) is
// checked when that answer comes, and only the verdict of the text submitted last is shown.
async function checkMessage(event) {
  event.preventDefault();
  if ($("check").disabled) return; // no spam model (Ctrl+Enter submits even so)
  queued = $("message").value;
  if (checking) return;
  checking = true;
  $("spam").setAttribute("aria-busy", "true");
  try {
    while (queued !== null) {
      const text = queued;
      queued = null;
      await check(text);
    }
  } finally {
    checking = false;
    $("spam").setAttribute("aria-busy", "false");
  }
}

// Check `text` and show its verdict, unless another text was submitted meanwhile.
async function check(text) {
  const error = $("spam-error");
  if (!text.trim()) {
    hideVerdict(); // the last verdict was about another message
    error.hidden = false;
    error.textContent = "Paste a message first.";
    $("message").focus();
    return;
  }
  try {
    const result = await postJSON("/api/spam/classify", text, "text/plain; charset=utf-8");
    await describedAs(result, () => spamModel);
    if (queued !== null) return; // (another text submitted since: its verdict is the one to show)
    error.hidden = true;
    $("spam-result").hidden = false;
    const verdict = $("verdict");
    verdict.textContent = result.label;
    verdict.className = `verdict ${result.label}`;
    $("spam-probability").textContent = `probability of spam ${percent(result.probability)}`;
    $("spam-meter").value = result.probability;
    const spammy = result.top_tokens.filter((t) => t.weight > 0).sort((a, b) => b.weight - a.weight);
    const hammy = result.top_tokens.filter((t) => t.weight < 0).sort((a, b) => a.weight - b.weight);
    $("tokens-spam").replaceChildren(...spammy.map(chip));
    $("tokens-ham").replaceChildren(...hammy.map(chip));
    highlight(text, result.top_tokens, result.header_lines);
  } catch (err) {
    // No spam model: serve was started again without one. The models are asked for again, and the
    // header no longer lists the one it had.
    if (err.status === 503) await fetchModels().catch(() => {});
    if (queued !== null) return;
    hideVerdict();
    error.hidden = false;
    error.textContent = failure(err, "message", new Blob([text]).size);
  }
}

$("spam-form").addEventListener("submit", checkMessage);
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("spam-form").requestSubmit();
});

clearPad();
resetPrediction();
loadModels();
