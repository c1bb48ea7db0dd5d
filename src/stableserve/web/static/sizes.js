// Output sizes an engine allows, from its capabilities' dimension rule, and its price rule.

const RATIOS = [
  [1, 1], [16, 9], [9, 16], [3, 2], [2, 3], [5, 4], [4, 5], [21, 9], [9, 21],
];

/** "16:9"-style label of the common ratio nearest to w x h. */
export function ratioLabel(w, h) {
  let best = RATIOS[0];
  for (const r of RATIOS) {
    if (Math.abs(Math.log(w / h) - Math.log(r[0] / r[1])) < Math.abs(Math.log(w / h) - Math.log(best[0] / best[1])))
      best = r;
  }
  const exact = Math.abs(Math.log(w / h) - Math.log(best[0] / best[1])) < 0.01;
  return `${exact ? "" : "≈"}${best[0]}:${best[1]}`;
}

/** Whether w x h satisfies the rule (same logic as the server's core.validation). */
export function allowed(rule, w, h) {
  if (rule.kind === "any") return true;
  if (rule.kind === "fixed") return rule.sizes.some((s) => s.width === w && s.height === h);
  if (w % rule.multiple || h % rule.multiple || w < rule.min_side || h < rule.min_side) return false;
  if (rule.kind === "sdxl_beta") {
    const max = rule.max_side || 896;
    return !(w > 512 && h > 512) && w <= max && h <= max;
  }
  const px = w * h;
  return px >= (rule.min_pixels || 0) && px <= (rule.max_pixels || px);
}

/**
 * [{width, height, label}] for a size picker: a fixed rule's sizes, else for each common
 * aspect ratio the allowed size nearest to the default area. The default size comes first.
 */
export function sizeOptions(cap) {
  const rule = cap.dimensions;
  const label = (w, h) => `${ratioLabel(w, h)} · ${w} × ${h}`;
  const def = { width: cap.default_width, height: cap.default_height };
  let sizes = [];
  if (rule.kind === "fixed") {
    sizes = rule.sizes.map((s) => ({ ...s }));
  } else if (rule.kind !== "any") {
    const area = def.width * def.height;
    const limit = Math.min(2048, rule.max_side || (rule.max_pixels ? rule.max_pixels / rule.min_side : 2048));
    for (const [a, b] of RATIOS) {
      let best = null;
      for (let w = rule.min_side; w <= limit; w += rule.multiple) {
        for (let h = rule.min_side; h <= limit; h += rule.multiple) {
          if (!allowed(rule, w, h)) continue;
          const skew = Math.abs(Math.log(w / h) - Math.log(a / b));
          const score = skew * 4 + Math.abs(Math.log((w * h) / area));
          if (skew < 0.1 && (!best || score < best.score)) best = { width: w, height: h, score };
        }
      }
      if (best) sizes.push({ width: best.width, height: best.height });
    }
  }
  if (allowed(rule, def.width, def.height)) sizes.unshift(def);
  const seen = new Set();
  return sizes
    .filter((s) => !seen.has(`${s.width}x${s.height}`) && seen.add(`${s.width}x${s.height}`))
    .map((s) => ({ ...s, label: label(s.width, s.height) }));
}

/** Credits by the engine's price rule (the server's core.pricing formula). */
export function localPrice(cap, { width, height, steps, samples }) {
  const rule = cap.price;
  let c = rule.per_image * samples;
  if (rule.reference_steps && steps) c *= Math.max(1, steps / rule.reference_steps);
  if (rule.reference_pixels && width && height) c *= Math.max(1, (width * height) / rule.reference_pixels);
  return Math.round(c * 1e6) / 1e6;
}
