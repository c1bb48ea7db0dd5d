// The inpainting mask: a canvas over the source image (same pixel size as the image) painted
// with a round brush (mouse, pen or touch). Exported as a PNG: white = repaint, black = keep
// (v1 mask_source MASK_IMAGE_WHITE).

const PAINT = "rgb(255, 45, 120)";

export class MaskEditor {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.brush = 48;
    this.last = null;
    this.onchange = () => {};
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) canvas.addEventListener(type, () => this.#up());
  }

  /** Start a new, empty mask of w x h pixels. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.onchange();
  }

  fill() {
    this.ctx.fillStyle = PAINT;
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.onchange();
  }

  invert() {
    const { width, height } = this.canvas;
    const data = this.ctx.getImageData(0, 0, width, height);
    this.ctx.fillStyle = PAINT;
    this.ctx.fillRect(0, 0, width, height);
    const painted = this.ctx.getImageData(0, 0, width, height);
    for (let i = 3; i < data.data.length; i += 4) painted.data[i] = 255 - data.data[i];
    this.ctx.putImageData(painted, 0, 0);
    this.onchange();
  }

  /** Paint from an uploaded mask image: its bright pixels become the mask (scaled to fit). */
  load(img) {
    const { width, height } = this.canvas;
    const tmp = new OffscreenCanvas(width, height);
    const tctx = tmp.getContext("2d");
    tctx.drawImage(img, 0, 0, width, height);
    const src = tctx.getImageData(0, 0, width, height).data;
    const out = this.ctx.createImageData(width, height);
    for (let i = 0; i < src.length; i += 4) {
      out.data.set([255, 45, 120, Math.round((src[i] + src[i + 1] + src[i + 2]) / 3)], i);
    }
    this.ctx.putImageData(out, 0, 0);
    this.onchange();
  }

  /** True when nothing is painted. */
  isEmpty() {
    const { data } = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i]) return false;
    return true;
  }

  /** The mask as a PNG Blob: white where painted, black elsewhere. */
  toBlob() {
    const { width, height } = this.canvas;
    const { data } = this.ctx.getImageData(0, 0, width, height);
    const out = new ImageData(width, height);
    for (let i = 0; i < data.length; i += 4) {
      const v = data[i + 3];
      out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
      out.data[i + 3] = 255;
    }
    const tmp = new OffscreenCanvas(width, height);
    tmp.getContext("2d").putImageData(out, 0, 0);
    return tmp.convertToBlob({ type: "image/png" });
  }

  #point(e) {
    const r = this.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - r.left) / r.width) * this.canvas.width,
      y: ((e.clientY - r.top) / r.height) * this.canvas.height,
    };
  }

  #down(e) {
    e.preventDefault();
    this.canvas.setPointerCapture?.(e.pointerId);
    this.last = this.#point(e);
    this.#stroke(this.last, this.last);
  }

  #move(e) {
    if (!this.last) return;
    const p = this.#point(e);
    this.#stroke(this.last, p);
    this.last = p;
  }

  #up() {
    if (!this.last) return;
    this.last = null;
    this.onchange();
  }

  #stroke(a, b) {
    const ctx = this.ctx;
    ctx.strokeStyle = PAINT;
    ctx.lineWidth = this.brush;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x + 0.01, b.y);
    ctx.stroke();
  }
}
