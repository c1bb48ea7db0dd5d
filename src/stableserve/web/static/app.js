// The playground: sign-in, the job form (built from the engines' capabilities), running jobs
// with progress and cost, the gallery and the history. Only this server's public API is used.

import { Api, ApiError } from "./api.js";
import { $, $$, credits, h, loadImage } from "./dom.js";
import { Gallery, History } from "./gallery.js";
import { FAST_UPSCALE, runJob, textToImageBody } from "./jobs.js";
import { MaskEditor } from "./mask.js";
import { localPrice, sizeOptions } from "./sizes.js";

const KEY = "stableserve.key";
const TASK = { "text-to-image": "text-to-image", "image-to-image": "image-to-image", inpaint: "masking", upscale: "upscale" };
const RUN_LABEL = {
  "text-to-image": "Generate",
  "image-to-image": "Transform",
  inpaint: "Inpaint",
  outpaint: "Outpaint",
  upscale: "Upscale",
};
const NEEDS_PROMPT = new Set(["text-to-image", "image-to-image", "inpaint"]);

const state = {
  api: null,
  caps: new Map(), // engine id -> capabilities
  mode: "text-to-image",
  chosen: {}, // mode -> engine id
  source: null, // {blob, url, width, height, label}
  job: null, // id of the running async job
  busy: false,
  cancelling: false,
  priceToken: 0,
};

const gallery = new Gallery($("#gallery"), $("#gallery-empty"), { reuseSeed, use: useImage });
const history = new History($("#history"));
const mask = new MaskEditor($("#mask"));

// -- errors -------------------------------------------------------------------------------------
function showError(err) {
  const e = err instanceof ApiError ? err : new ApiError(0, "error", err.message || String(err), "");
  $("#error-code").textContent = e.code;
  $("#error-message").textContent = e.message;
  $("#error-id").textContent = e.id || "–";
  $("#error-id").parentElement.hidden = !e.id;
  $("#error").hidden = false;
}

function hideError() {
  $("#error").hidden = true;
}

// -- sign in ------------------------------------------------------------------------------------
async function signIn(key) {
  const api = new Api(key);
  let account;
  try {
    account = await api.account();
  } catch (err) {
    showError(err);
    if (err.status === 401) sessionStorage.removeItem(KEY);
    return;
  }
  hideError();
  sessionStorage.setItem(KEY, key);
  state.api = api;
  const org = account.organizations.find((o) => o.is_default) || account.organizations[0];
  $("#org").textContent = org ? org.name : "–";
  $("#org").title = org ? org.id : "";
  $("#email").textContent = account.email;
  $("#signin").hidden = true;
  $("#intro").hidden = true;
  $("#account").hidden = false;
  $("#main").hidden = false;
  await Promise.all([refreshBalance(), loadEngines()]);
}

function signOut() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

async function refreshBalance() {
  try {
    const value = await state.api.balance();
    $("#balance").textContent = credits(value);
    $("#balance").dataset.credits = String(value);
    return value;
  } catch (err) {
    showError(err);
    return undefined;
  }
}

// -- engines ------------------------------------------------------------------------------------
async function loadEngines() {
  let list;
  try {
    list = await state.api.engines();
  } catch (err) {
    showError(err);
    return;
  }
  const queue = [...list];
  const worker = async () => {
    for (let e = queue.shift(); e; e = queue.shift()) {
      try {
        state.caps.set(e.id, await state.api.capabilities(e.id));
      } catch (err) {
        state.caps.set(e.id, { ...e, tasks: [], ready: false, ready_reason: err.message });
      }
    }
  };
  await Promise.all([1, 2, 3, 4].map(worker));
  // keep registry order
  state.caps = new Map(list.map((e) => [e.id, state.caps.get(e.id)]));
  const presets = [...state.caps.values()].find((c) => c.style_presets?.length)?.style_presets || [];
  $("#style").replaceChildren(h("option", { value: "" }, "None"), ...presets.map((p) => h("option", { value: p }, p)));
  renderEngines();
}

function renderEngines() {
  const select = $("#engine");
  const task = TASK[state.mode];
  if (!task) return;
  const options = [];
  for (const cap of state.caps.values()) {
    if (!cap.tasks.includes(task)) continue;
    let why = cap.ready ? "ready" : `not ready: ${cap.ready_reason}`;
    if (cap.control) why = `needs a ${cap.control} control image (v2beta control)`;
    const usable = cap.ready && !cap.control;
    options.push(h("option", { value: cap.id, disabled: !usable, title: why }, `${cap.name} — ${why}`));
  }
  if (state.mode === "upscale") {
    options.push(h("option", { value: FAST_UPSCALE }, "v2beta fast upscale (4×) — /v2beta/stable-image/upscale/fast"));
  }
  select.replaceChildren(...options);
  const wanted = options.find((o) => o.value === state.chosen[state.mode] && !o.disabled);
  const first = options.find((o) => !o.disabled);
  select.value = (wanted || first)?.value ?? "";
  onEngineChange();
}

function onEngineChange() {
  const cap = state.caps.get($("#engine").value);
  if (TASK[state.mode]) state.chosen[state.mode] = $("#engine").value;
  const note = $("#engine-note");
  if (!cap) {
    note.textContent = $("#engine").value === FAST_UPSCALE ? "Four times the input size, at most 16 megapixels." : "";
    updatePrice();
    return;
  }
  note.replaceChildren(
    h("code", {}, cap.id),
    ` · ${cap.ready_reason}`,
    cap.default_sampler ? ` · default: ${cap.default_steps} steps, ${cap.default_sampler}` : "",
    ` · ${credits(cap.default_price)} credits per default image`,
  );
  const sizes = sizeOptions(cap);
  const size = $("#size");
  const previous = size.value;
  size.replaceChildren(...sizes.map((s) => h("option", { value: `${s.width}x${s.height}` }, s.label)));
  if (sizes.some((s) => `${s.width}x${s.height}` === previous)) size.value = previous;
  const sampler = $("#sampler");
  const chosen = sampler.value;
  sampler.replaceChildren(
    h("option", { value: "" }, "Engine default"),
    ...cap.samplers.map((s) => h("option", { value: s }, s)),
  );
  if (cap.samplers.includes(chosen)) sampler.value = chosen;
  const steps = $("#steps");
  steps.min = cap.limits.steps_min;
  steps.max = cap.limits.steps_max;
  if (!steps.dataset.touched && cap.default_steps) steps.value = cap.default_steps;
  $("#samples").max = cap.limits.samples_max;
  updatePrice();
}

// -- modes and the source image -----------------------------------------------------------------
function applyMode(mode) {
  state.mode = mode;
  for (const el of $$("[data-modes]")) el.hidden = !el.dataset.modes.split(" ").includes(mode);
  $("#run").textContent = RUN_LABEL[mode];
  $("#prompt").required = NEEDS_PROMPT.has(mode);
  renderEngines();
  renderSource();
  updatePrice();
}

function renderSource() {
  const s = state.source;
  $("#stage").hidden = !s;
  $("#source-empty").hidden = !!s;
  $("#source-size").textContent = s ? `${s.label} · ${s.width} × ${s.height} pixels` : "";
}

function setSource(source) {
  state.source = source;
  $("#source-img").src = source.url;
  $("#source-img").width = source.width;
  $("#source-img").height = source.height;
  mask.reset(source.width, source.height);
  renderSource();
  updatePrice();
}

function useImage(item, mode) {
  const made = state.caps.get(item.params.engine);
  if (made && TASK[mode] && made.tasks.includes(TASK[mode])) state.chosen[mode] = made.id; // same engine
  setSource({ blob: item.blob, url: item.url, width: item.width, height: item.height, label: `image with seed ${item.seed}` });
  $(`input[name=mode][value="${mode}"]`).checked = true;
  applyMode(mode);
  if (!$("#prompt").value && item.params.prompt) $("#prompt").value = item.params.prompt;
  $("#source").scrollIntoView({ block: "start" });
  (mode === "inpaint" ? $("#brush") : $("#prompt")).focus({ preventScroll: true });
}

function reuseSeed(item) {
  $("#seed-random").checked = false;
  $("#seed").disabled = false;
  $("#seed").value = item.seed;
  $("#seed").focus();
}

// -- form values, price -------------------------------------------------------------------------
function values() {
  const num = (id) => Number($(id).value);
  const [width, height] = ($("#size").value || "x").split("x").map(Number);
  const image = state.mode !== "text-to-image" && state.source;
  return {
    mode: state.mode,
    engine: state.mode === "outpaint" ? "" : $("#engine").value,
    prompt: $("#prompt").value.trim(),
    negative: $("#negative").value.trim(),
    style: $("#style").value || null,
    width: image ? state.source.width : width,
    height: image ? state.source.height : height,
    steps: num("#steps"),
    cfg: num("#cfg"),
    sampler: $("#sampler").value || null,
    samples: num("#samples"),
    seed: $("#seed-random").checked ? 0 : num("#seed"),
    strength: num("#strength"),
    creativity: num("#creativity"),
    sides: Object.fromEntries(["left", "right", "up", "down"].map((s) => [s, num(`#${s}`)])),
  };
}

function problem(v) {
  if (NEEDS_PROMPT.has(v.mode) && !v.prompt) return ["#prompt", "prompt: write what the image should show"];
  if (v.mode !== "text-to-image" && !state.source) return ["#upload", "image: pick a gallery image or upload one"];
  if (v.mode === "inpaint" && mask.isEmpty()) return ["#brush", "mask: paint over the area to repaint"];
  if (v.mode === "outpaint" && !Object.values(v.sides).some((x) => x > 0))
    return ["#right", "left, right, up, down: extend at least one side"];
  for (const el of $$("#job input")) {
    if (!el.closest("[hidden]") && !el.checkValidity()) return [`#${el.id}`, `${el.id}: ${el.validationMessage}`];
  }
  return null;
}

function setPrice(value, note) {
  $("#price").textContent = credits(value);
  $("#price").dataset.credits = Number.isFinite(value) ? String(value) : "";
  $("#price-note").textContent = note || "";
}

let priceTimer = 0;
function updatePrice() {
  clearTimeout(priceTimer);
  state.priceToken++; // an answer still on its way is stale now
  setPrice(NaN, "");
  priceTimer = setTimeout(estimate, 150);
}

async function estimate() {
  const token = ++state.priceToken;
  const v = values();
  const cap = state.caps.get(v.engine);
  if (v.mode === "outpaint" || v.engine === FAST_UPSCALE) return setPrice(NaN, "(a flat product price, shown after the run)");
  if (!cap) return setPrice(NaN, "");
  if (v.mode === "upscale") return setPrice(cap.default_price, "per image");
  if (!v.width || !v.height) return setPrice(NaN, "(pick a source image)");
  const body = { ...textToImageBody({ ...v, prompt: v.prompt || "price", negative: "" }) };
  try {
    const value = await state.api.price(v.engine, body);
    if (token === state.priceToken) setPrice(value, "");
  } catch {
    if (token === state.priceToken) setPrice(localPrice(cap, v), "(from the engine's price rule)");
  }
}

// -- running a job ------------------------------------------------------------------------------
function progress(text, fraction) {
  const bar = $("#progress");
  if (fraction === null || fraction === undefined) bar.removeAttribute("value");
  else bar.value = fraction;
  $("#progress-text").textContent = text;
}

async function run(event) {
  event.preventDefault();
  if (state.busy) return;
  const v = values();
  const bad = problem(v);
  if (bad) {
    showError(new ApiError(0, "check_the_form", bad[1], ""));
    $(bad[0]).focus();
    return;
  }
  hideError();
  state.busy = true;
  state.cancelling = false;
  $("#run").disabled = true;
  $("#outcome").textContent = "";
  $("#progress-box").hidden = false;
  $("#cancel").hidden = true;
  progress("Submitting…", null);
  clearTimeout(priceTimer);
  await estimate(); // the cost before, of exactly these values
  const estimated = Number($("#price").dataset.credits || NaN);
  const before = await refreshBalance();
  const record = { mode: v.mode, engine: v.engine || "outpaint", prompt: v.prompt };
  try {
    const maskBlob = v.mode === "inpaint" ? await mask.toBlob() : null;
    const results = await runJob(state.api, v, state.source, maskBlob, {
      onStart: ({ id, credits: reserved }) => {
        state.job = id;
        $("#cancel").hidden = false;
        progress(`Queued · ${credits(reserved)} credits reserved`, null);
      },
      onProgress: (p) => {
        const pct = typeof p.progress === "number" ? ` ${Math.round(p.progress * 100)} %` : "";
        progress(`${p.state === "running" ? "Running" : "Queued"}${pct}`, p.state === "running" ? p.progress : null);
      },
    });
    progress("Fetching the images…", 1);
    const after = await refreshBalance();
    const cost = before !== undefined && after !== undefined ? Math.round((before - after) * 1e6) / 1e6 : undefined;
    const cap = state.caps.get(v.engine);
    for (const r of results) {
      const img = await loadImage(r.blob);
      gallery.add({
        ...img,
        blob: r.blob,
        seed: r.seed,
        params: {
          mode: v.mode,
          engine: v.engine === FAST_UPSCALE ? "v2beta upscale/fast" : v.engine || "v2beta outpaint",
          steps: NEEDS_PROMPT.has(v.mode) ? v.steps : undefined,
          cfg_scale: NEEDS_PROMPT.has(v.mode) ? v.cfg : undefined,
          sampler: NEEDS_PROMPT.has(v.mode) ? v.sampler || `default (${cap?.default_sampler})` : undefined,
          style_preset: v.mode === "upscale" ? undefined : v.style,
          image_strength: v.mode === "image-to-image" ? v.strength : undefined,
          prompt: v.engine === FAST_UPSCALE ? undefined : v.prompt,
          negative_prompt: v.mode === "upscale" ? undefined : v.negative,
          finish_reason: r.finishReason,
          cost,
        },
      });
    }
    const est = Number.isFinite(estimated) ? ` (estimated ${credits(estimated)})` : "";
    $("#outcome").textContent = `Done: ${results.length} image${results.length > 1 ? "s" : ""}; cost ${credits(cost)} credits${est}.`;
    $("#outcome").dataset.cost = cost === undefined ? "" : String(cost);
    history.add({ ...record, status: "done", cost, images: results.length });
  } catch (err) {
    const after = await refreshBalance();
    const cost = before !== undefined && after !== undefined ? Math.round((before - after) * 1e6) / 1e6 : undefined;
    history.add({ ...record, status: state.cancelling ? "cancelled" : "failed", cost, error: errorOf(err) });
    $("#outcome").textContent = state.cancelling ? "Cancelled." : "Failed: see the error above.";
    showError(err);
  } finally {
    state.busy = false;
    state.job = null;
    $("#run").disabled = false;
    $("#progress-box").hidden = true;
  }
}

function errorOf(err) {
  return { code: err.code || "error", message: err.message, id: err.id || "" };
}

async function cancel() {
  if (!state.job) return;
  state.cancelling = true;
  progress("Cancelling…", null);
  try {
    await state.api.cancel(state.job);
  } catch (err) {
    showError(err);
  }
}

// -- wiring -------------------------------------------------------------------------------------
$("#signin").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("#key").value.trim();
  if (key) signIn(key);
});
$("#signout").addEventListener("click", signOut);
$("#error-close").addEventListener("click", hideError);
$("#job").addEventListener("submit", run);
$("#cancel").addEventListener("click", cancel);
$("#engine").addEventListener("change", onEngineChange);
for (const radio of $$("input[name=mode]")) radio.addEventListener("change", () => applyMode(radio.value));
for (const id of ["#size", "#samples"]) $(id).addEventListener("input", updatePrice);
$("#steps").addEventListener("input", () => {
  $("#steps").dataset.touched = "1";
  updatePrice();
});
$("#seed-random").addEventListener("change", () => {
  $("#seed").disabled = $("#seed-random").checked;
});
for (const name of ["strength", "creativity"]) {
  $(`#${name}`).addEventListener("input", () => ($(`#${name}-out`).value = $(`#${name}`).value));
}
for (const id of ["#prompt", "#negative"]) {
  $(id).addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#job").requestSubmit();
  });
}
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.job) cancel();
});
$("#upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  try {
    const img = await loadImage(file);
    setSource({ blob: file, url: img.url, width: img.width, height: img.height, label: file.name });
  } catch (err) {
    showError(err);
  }
});
$("#mask-upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file || !state.source) return;
  try {
    mask.load((await loadImage(file)).img);
  } catch (err) {
    showError(err);
  }
});
$("#brush").addEventListener("input", () => (mask.brush = Number($("#brush").value)));
$("#mask-clear").addEventListener("click", () => mask.clear());
$("#mask-fill").addEventListener("click", () => mask.fill());
$("#mask-invert").addEventListener("click", () => mask.invert());

applyMode(state.mode);
const saved = sessionStorage.getItem(KEY);
if (saved) signIn(saved);
