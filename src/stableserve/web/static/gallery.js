// The gallery (images of this session, newest first, with their parameters) and the history
// (every job of this browser session, kept in sessionStorage, failures with their error).

import { $, credits, h } from "./dom.js";

const HISTORY_KEY = "stableserve.history";
const FORMATS = ["png", "jpeg", "webp"];

/** Save `item`'s image as PNG, JPEG or WEBP (converted in the browser). */
export async function download(item, format) {
  let blob = item.blob;
  if (blob.type !== `image/${format}`) {
    const canvas = new OffscreenCanvas(item.width, item.height);
    const ctx = canvas.getContext("2d");
    if (format === "jpeg") {
      ctx.fillStyle = "#fff"; // JPEG has no alpha
      ctx.fillRect(0, 0, item.width, item.height);
    }
    ctx.drawImage(await createImageBitmap(item.blob), 0, 0);
    blob = await canvas.convertToBlob({ type: `image/${format}`, quality: 0.92 });
  }
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: `stableserve-${item.seed}.${format === "jpeg" ? "jpg" : format}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function paramList(p) {
  const rows = [
    ["Mode", p.mode],
    ["Engine", p.engine],
    ["Size", `${p.width} × ${p.height}`],
    ["Seed", p.seed],
    ["Steps", p.steps],
    ["CFG scale", p.cfg_scale],
    ["Sampler", p.sampler],
    ["Style", p.style_preset],
    ["Strength", p.image_strength],
    ["Prompt", p.prompt],
    ["Negative", p.negative_prompt],
    ["Finish", p.finish_reason],
    ["Cost", p.cost === undefined ? undefined : `${credits(p.cost)} credits`],
  ];
  return h(
    "dl",
    { class: "params" },
    rows
      .filter(([, v]) => v !== undefined && v !== null && v !== "")
      .map(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { param: k.toLowerCase() } }, String(v))]),
  );
}

export class Gallery {
  /** actions: {reuseSeed(item), use(item, mode)} */
  constructor(list, empty, actions) {
    this.list = list;
    this.empty = empty;
    this.actions = actions;
    this.items = [];
  }

  add(item) {
    this.items.unshift(item);
    this.empty.hidden = true;
    const n = this.items.length;
    const title = `Image ${n}: ${item.params.prompt || item.params.mode}`;
    const use = (mode, text) =>
      h("button", { type: "button", onclick: () => this.actions.use(item, mode), "aria-label": `${text} image ${n}` }, text);
    const figure = h(
      "li",
      { class: "card", dataset: { seed: item.seed } },
      h(
        "a",
        { href: item.url, target: "_blank", rel: "noopener", class: "thumb", title: "Open full size" },
        h("img", { src: item.url, alt: title, width: item.width, height: item.height }),
      ),
      paramList({ ...item.params, seed: item.seed, width: item.width, height: item.height }),
      h(
        "div",
        { class: "actions", role: "group", "aria-label": `Use image ${n}` },
        h("button", { type: "button", onclick: () => this.actions.reuseSeed(item), "aria-label": `Reuse the seed of image ${n}` }, "Reuse seed"),
        use("image-to-image", "Image-to-image"),
        use("inpaint", "Inpaint"),
        use("outpaint", "Outpaint"),
        use("upscale", "Upscale"),
      ),
      h(
        "div",
        { class: "actions", role: "group", "aria-label": `Download image ${n}` },
        FORMATS.map((f) =>
          h("button", { type: "button", class: "quiet", onclick: () => download(item, f), "aria-label": `Download image ${n} as ${f.toUpperCase()}` }, `⤓ ${f.toUpperCase()}`),
        ),
      ),
    );
    this.list.prepend(figure);
  }
}

export class History {
  constructor(list) {
    this.list = list;
    try {
      this.entries = JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "[]");
    } catch {
      this.entries = [];
    }
    this.render();
  }

  add(entry) {
    this.entries.unshift({ time: new Date().toLocaleTimeString(), ...entry });
    this.entries = this.entries.slice(0, 100);
    sessionStorage.setItem(HISTORY_KEY, JSON.stringify(this.entries));
    this.render();
  }

  render() {
    this.list.replaceChildren(
      ...this.entries.map((e) =>
        h(
          "li",
          { class: `history-${e.status}` },
          h("span", { class: "when" }, e.time),
          h("strong", {}, ` ${e.mode}`),
          e.engine ? ` on ${e.engine}` : "",
          ` — ${e.status}`,
          e.cost !== undefined ? `, ${credits(e.cost)} credits` : "",
          e.images ? `, ${e.images} image${e.images > 1 ? "s" : ""}` : "",
          e.prompt ? h("div", { class: "muted" }, `“${e.prompt}”`) : "",
          e.error ? h("div", { class: "muted" }, `${e.error.code}: ${e.error.message} (error id ${e.error.id || "–"})`) : "",
        ),
      ),
    );
    $("#history-empty").hidden = this.entries.length > 0;
  }
}
