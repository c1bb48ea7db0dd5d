// One playground job as the API calls it takes: v1 text-to-image (JSON), image-to-image,
// masking and upscale (multipart), all as async jobs with progress; v2beta outpaint and
// upscale/fast (multipart, synchronous). Resolves to [{blob, seed, finishReason}].

import { b64ToBlob } from "./dom.js";

export const FAST_UPSCALE = "v2beta:upscale/fast";

function prompts(v) {
  const list = [];
  if (v.prompt) list.push({ text: v.prompt, weight: 1 });
  if (v.negative) list.push({ text: v.negative, weight: -1 });
  return list;
}

/** The v1 text-to-image JSON body of the form values `v`. */
export function textToImageBody(v) {
  const body = {
    text_prompts: prompts(v),
    width: v.width,
    height: v.height,
    steps: v.steps,
    cfg_scale: v.cfg,
    samples: v.samples,
    seed: v.seed,
  };
  if (v.sampler) body.sampler = v.sampler;
  if (v.style) body.style_preset = v.style;
  return body;
}

/** v1 multipart fields: text_prompts[i][text|weight] and the common parameters. */
function v1Form(v, fields) {
  const form = new FormData();
  prompts(v).forEach((p, i) => {
    form.append(`text_prompts[${i}][text]`, p.text);
    form.append(`text_prompts[${i}][weight]`, String(p.weight));
  });
  for (const [k, value] of Object.entries({
    cfg_scale: v.cfg,
    steps: v.steps,
    samples: v.samples,
    seed: v.seed,
    sampler: v.sampler,
    style_preset: v.style,
    ...fields,
  })) {
    if (value instanceof Blob) form.append(k, value, `${k}.png`);
    else if (value !== null && value !== undefined && value !== "") form.append(k, String(value));
  }
  return form;
}

function v2Form(fields) {
  const form = new FormData();
  for (const [k, value] of Object.entries(fields)) {
    if (value instanceof Blob) form.append(k, value, `${k}.png`);
    else if (value !== null && value !== undefined && value !== "") form.append(k, String(value));
  }
  return form;
}

const fromArtifacts = (artifacts) =>
  artifacts.map((a) => ({ blob: b64ToBlob(a.base64), seed: a.seed, finishReason: a.finishReason }));

const fromV2 = (r) => [{ blob: b64ToBlob(r.image), seed: r.seed, finishReason: r.finish_reason }];

/**
 * Run the job of form values `v` (v.mode, v.engine, ...) on `source` ({blob}) with `mask`
 * (a PNG Blob, inpainting only). hooks: {onStart, onProgress} of Api.generate.
 */
export async function runJob(api, v, source, mask, hooks) {
  const engine = encodeURIComponent(v.engine);
  switch (v.mode) {
    case "text-to-image":
      return fromArtifacts(
        await api.generate(`/v1/generation/${engine}/text-to-image`, { json: textToImageBody(v) }, hooks),
      );
    case "image-to-image": {
      const form = v1Form(v, {
        init_image: source.blob,
        init_image_mode: "IMAGE_STRENGTH",
        image_strength: v.strength,
      });
      return fromArtifacts(await api.generate(`/v1/generation/${engine}/image-to-image`, { form }, hooks));
    }
    case "inpaint": {
      const form = v1Form(v, { init_image: source.blob, mask_image: mask, mask_source: "MASK_IMAGE_WHITE" });
      return fromArtifacts(await api.generate(`/v1/generation/${engine}/image-to-image/masking`, { form }, hooks));
    }
    case "outpaint": {
      const form = v2Form({
        image: source.blob,
        ...v.sides,
        creativity: v.creativity,
        prompt: v.prompt,
        negative_prompt: v.negative,
        style_preset: v.style,
        seed: v.seed,
        output_format: "png",
      });
      return fromV2(await api.v2("/v2beta/stable-image/edit/outpaint", form));
    }
    case "upscale": {
      if (v.engine === FAST_UPSCALE) {
        return fromV2(await api.v2("/v2beta/stable-image/upscale/fast", v2Form({ image: source.blob, output_format: "png" })));
      }
      const form = new FormData();
      form.append("image", source.blob, "image.png");
      if (v.prompt) form.append("text_prompts[0][text]", v.prompt);
      return fromArtifacts(await api.generate(`/v1/generation/${engine}/image-to-image/upscale`, { form }, hooks));
    }
    default:
      throw new Error(`unknown mode ${v.mode}`);
  }
}
