// The public API of this server, as any client calls it (Authorization: Bearer <key>).
// Errors come back as ApiError with the API's name, message and error id:
// v1 bodies are {id, name, message}; v2beta bodies are {id, name, errors: [...]}.

export class ApiError extends Error {
  constructor(status, code, message, id) {
    super(message);
    this.status = status;
    this.code = code;
    this.id = id;
  }

  static from(resp, data, text) {
    const body = data && typeof data === "object" ? data : {};
    const message =
      body.message ||
      (Array.isArray(body.errors) && body.errors.join("; ")) ||
      (body.error && body.error.message) ||
      text ||
      resp.statusText;
    const code = body.name || (body.error && body.error.code) || `http_${resp.status}`;
    return new ApiError(resp.status, code, message, body.id || resp.headers.get("x-request-id") || "");
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Api {
  constructor(key) {
    this.key = key;
  }

  /** One call; resolves to {status, data, headers}; rejects with ApiError on 4xx/5xx. */
  async call(method, path, { json, form, headers = {}, accept = "application/json" } = {}) {
    const init = { method, headers: { Authorization: `Bearer ${this.key}`, Accept: accept, ...headers } };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form) {
      init.body = form;
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "network_error", `The server could not be reached (${err.message}).`, "");
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!resp.ok) throw ApiError.from(resp, data, text);
    return { status: resp.status, data, headers: resp.headers };
  }

  async get(path) {
    return (await this.call("GET", path)).data;
  }

  account() {
    return this.get("/v1/user/account");
  }

  async balance() {
    return (await this.get("/v1/user/balance")).credits;
  }

  engines() {
    return this.get("/v1/engines/list");
  }

  capabilities(engineId) {
    return this.get(`/v1/engines/${encodeURIComponent(engineId)}/capabilities`);
  }

  /** Credits a text-to-image body would cost (stableserve's /price extension). */
  async price(engineId, body) {
    const r = await this.call("POST", `/v1/generation/${encodeURIComponent(engineId)}/price`, { json: body });
    return r.data.credits;
  }

  /**
   * A v1 generation as an async job (Prefer: respond-async), polled until done.
   * hooks.onStart({id, credits}) once accepted, hooks.onProgress({state, progress}) while it runs.
   * Resolves to the artifacts; a server that answers at once (200) is fine too.
   */
  async generate(path, { json, form }, hooks = {}) {
    const first = await this.call("POST", path, { json, form, headers: { Prefer: "respond-async" } });
    if (first.status === 200) return first.data.artifacts;
    const { id, credits } = first.data;
    hooks.onStart?.({ id, credits });
    for (let delay = 250; ; delay = Math.min(delay * 1.5, 1000)) {
      await sleep(delay);
      const r = await this.call("GET", `/v1/generation/results/${id}`);
      if (r.status === 200) return r.data.artifacts;
      hooks.onProgress?.(r.data);
    }
  }

  /** Ask the server to cancel job `id` (its poll then answers the cancellation error). */
  cancel(id) {
    return this.call("DELETE", `/v1/generation/results/${id}`);
  }

  /** A synchronous v2beta edit/upscale; resolves to {image (base64), seed, finish_reason}. */
  async v2(path, form) {
    return (await this.call("POST", path, { form })).data;
  }
}
