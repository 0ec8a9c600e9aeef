// radnode — image viewer of the study page. The node sends each image once at full depth
// (16-bit samples of the Modality-LUT values, node/web/pixels.py); window/level runs here,
// in a WebGL2 fragment shader over an R16UI texture on a GPU, or, without one (WebGL2 in
// software is slower), through a lookup table on a 2D canvas. Zoom and pan, orientation markers, distance measurement.
// No dependencies.
"use strict";

(function () {
  const MIN_SCALE = 0.02;
  const MAX_SCALE = 32;
  const FUNCTIONS = { LINEAR: 0, LINEAR_EXACT: 1, SIGMOID: 2, VOI_LUT: 3 };
  const LUT_ROW = 4096;  // entries per row of the VOI LUT texture
  const MAX_FRAMES_KEPT = 20000;
  const SOFTWARE_WEBGL_KEY = "radnode:webgl2-software";  // the probe's answer, per tab
  const VIEW_LABELS = { PA: "PA", AP: "AP", LL: "LATERAL (LL)", RL: "LATERAL (RL)",
                        LAT: "LATERAL", LATERAL: "LATERAL" };

  // VOI window onto [0, 1]: PS3.3 C.11.2.1.2 (the same arithmetic as
  // workers/inference/preprocess.window_to_unit), or the file's VOI LUT.
  function unit(value, center, width, fn, lut) {
    if (fn === FUNCTIONS.VOI_LUT) {
      const index = Math.min(lut.data.length - 1, Math.max(0, Math.round(value) - lut.first));
      return (lut.data[index] - lut.low) / (lut.high - lut.low);
    }
    if (fn === FUNCTIONS.LINEAR) {
      const c = center - 0.5;
      const w = width - 1;
      if (value <= c - w / 2) return 0;
      if (value > c + w / 2) return 1;
      return (value - c) / w + 0.5;
    }
    if (fn === FUNCTIONS.LINEAR_EXACT) return Math.min(1, Math.max(0, (value - center) / width + 0.5));
    return 1 / (1 + Math.exp((-4 * (value - center)) / width));
  }

  const VERTEX = `#version 300 es
const vec2 corners[3] = vec2[3](vec2(-1.0, -1.0), vec2(3.0, -1.0), vec2(-1.0, 3.0));
void main() { gl_Position = vec4(corners[gl_VertexID], 0.0, 1.0); }`;

  const FRAGMENT = `#version 300 es
precision highp float;
precision highp int;
precision highp usampler2D;
uniform usampler2D samples;
uniform sampler2D voiLut;
uniform int lutFirst;
uniform int lutCount;
uniform int rows;
uniform float offset;
uniform float scale;
uniform float center;
uniform float width;
uniform int voiFunction;
uniform bool invert;
out vec4 colour;
void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  p.y = rows - 1 - p.y;
  float v = offset + scale * float(texelFetch(samples, p, 0).r);
  float y;
  if (voiFunction == 0) {
    float c = center - 0.5;
    float w = width - 1.0;
    if (v <= c - w * 0.5) y = 0.0;
    else if (v > c + w * 0.5) y = 1.0;
    else y = (v - c) / w + 0.5;
  } else if (voiFunction == 3) {
    int i = clamp(int(round(v)) - lutFirst, 0, lutCount - 1);
    y = texelFetch(voiLut, ivec2(i % ${LUT_ROW}, i / ${LUT_ROW}), 0).r;
  } else if (voiFunction == 1) {
    y = clamp((v - center) / width + 0.5, 0.0, 1.0);
  } else {
    y = 1.0 / (1.0 + exp(-4.0 * (v - center) / width));
  }
  if (invert) y = 1.0 - y;
  colour = vec4(vec3(y), 1.0);
}`;

  // WebGL2: the samples in an unsigned-integer texture, windowed per fragment.
  class WebGLRenderer {
    // Whether WebGL2 runs in software (SwiftShader, llvmpipe): probed on a canvas of its
    // own, since a canvas that gave a WebGL context can give no 2D one. The answer is kept
    // for the browser tab (sessionStorage): the next study's page skips the probe.
    static software() {
      let known = null;
      try { known = window.sessionStorage.getItem(SOFTWARE_WEBGL_KEY); } catch (error) { /* no storage */ }
      if (known === "1" || known === "0") return known === "1";
      const software = WebGLRenderer.probeSoftware();
      try { window.sessionStorage.setItem(SOFTWARE_WEBGL_KEY, software ? "1" : "0"); } catch (error) { /* no storage */ }
      return software;
    }

    static probeSoftware() {
      const gl = document.createElement("canvas").getContext("webgl2", { failIfMajorPerformanceCaveat: true });
      if (!gl) return true;
      const info = gl.getExtension("WEBGL_debug_renderer_info");
      const name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
      const lose = gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();
      return /swiftshader|llvmpipe|softpipe|software/i.test(name);
    }

    // hardware: refuse a software implementation, slower than the 2D path.
    static create(canvas, hardware) {
      if (hardware && WebGLRenderer.software()) return null;
      const gl = canvas.getContext("webgl2", { preserveDrawingBuffer: true, antialias: false,
                                               alpha: false, premultipliedAlpha: false });
      if (!gl) return null;
      try {
        return new WebGLRenderer(canvas, gl);
      } catch (error) {
        return null;
      }
    }

    constructor(canvas, gl) {
      this.kind = "webgl2";
      this.canvas = canvas;
      this.gl = gl;
      const program = gl.createProgram();
      for (const [type, source] of [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, FRAGMENT]]) {
        const shader = gl.createShader(type);
        gl.shaderSource(shader, source);
        gl.compileShader(shader);
        if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
        gl.attachShader(program, shader);
      }
      gl.linkProgram(program);
      if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
      gl.useProgram(program);
      this.program = program;
      this.uniforms = {};
      for (const name of ["samples", "voiLut", "lutFirst", "lutCount", "rows", "offset", "scale",
                          "center", "width", "voiFunction", "invert"]) {
        this.uniforms[name] = gl.getUniformLocation(program, name);
      }
      this.texture = gl.createTexture();
      this.lutTexture = gl.createTexture();
      this.maxSize = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    }

    fits(image) {
      return image.columns <= this.maxSize && image.rows <= this.maxSize;
    }

    load(image) {
      const gl = this.gl;
      this.canvas.width = image.columns;
      this.canvas.height = image.rows;
      gl.viewport(0, 0, image.columns, image.rows);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, this.texture);
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 2);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.R16UI, image.columns, image.rows, 0,
                    gl.RED_INTEGER, gl.UNSIGNED_SHORT, image.samples);
      gl.uniform1i(this.uniforms.samples, 0);
      // The VOI LUT, normalised, in rows of LUT_ROW entries (a 1x1 texture without one).
      const lut = image.voi_lut;
      const count = lut ? lut.data.length : 1;
      const width = Math.min(count, LUT_ROW);
      const height = Math.ceil(count / LUT_ROW);
      const table = new Float32Array(width * height);
      if (lut) lut.data.forEach((entry, i) => { table[i] = (entry - lut.low) / (lut.high - lut.low); });
      gl.activeTexture(gl.TEXTURE1);
      gl.bindTexture(gl.TEXTURE_2D, this.lutTexture);
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 4);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.R32F, width, height, 0, gl.RED, gl.FLOAT, table);
      gl.uniform1i(this.uniforms.voiLut, 1);
      gl.uniform1i(this.uniforms.lutFirst, lut ? lut.first : 0);
      gl.uniform1i(this.uniforms.lutCount, count);
      gl.uniform1i(this.uniforms.rows, image.rows);
      gl.uniform1f(this.uniforms.offset, image.offset);
      gl.uniform1f(this.uniforms.scale, image.scale);
    }

    draw(state) {
      const gl = this.gl;
      gl.uniform1f(this.uniforms.center, state.center);
      gl.uniform1f(this.uniforms.width, state.width);
      gl.uniform1i(this.uniforms.voiFunction, state.voiFunction);
      gl.uniform1i(this.uniforms.invert, state.invert ? 1 : 0);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
    }

    finish() {
      this.gl.finish();
    }

    stale() {
      return false;
    }
  }

  // 2D canvas: a lookup table from sample to grey, rebuilt per window, then one pass over
  // the pixels. Zoomed out below one image pixel per screen pixel, it draws the mean of
  // each k x k block (k = screen pixels per image pixel, rounded down, computed once per
  // zoom level): the browser would show no more, and a window change costs k² times less.
  class CanvasRenderer {
    constructor(canvas) {
      this.kind = "canvas2d";
      this.canvas = canvas;
      this.context = canvas.getContext("2d", { alpha: false });
    }

    fits() {
      return true;
    }

    load(image) {
      this.image = image;
      this.levels = new Map();
      this.block = 0;
      let top = 0;
      for (let i = 0; i < image.samples.length; i++) if (image.samples[i] > top) top = image.samples[i];
      this.lut = new Uint32Array(top + 1);
    }

    static blockFor(view) {
      const screenPerImage = view.scale * (window.devicePixelRatio || 1);
      return Math.max(1, Math.floor(1 / screenPerImage));
    }

    level(k) {
      let level = this.levels.get(k);
      if (level) return level;
      const { samples, columns, rows } = this.image;
      if (k === 1) {
        level = { samples, columns, rows };
      } else {
        const outColumns = Math.ceil(columns / k);
        const outRows = Math.ceil(rows / k);
        const sums = new Float64Array(outColumns * outRows);
        const counts = new Uint32Array(outColumns * outRows);
        for (let r = 0; r < rows; r++) {
          const outRow = ((r / k) | 0) * outColumns;
          const row = r * columns;
          for (let c = 0; c < columns; c++) {
            const o = outRow + ((c / k) | 0);
            sums[o] += samples[row + c];
            counts[o] += 1;
          }
        }
        const means = new Uint16Array(sums.length);
        for (let i = 0; i < sums.length; i++) means[i] = Math.round(sums[i] / counts[i]);
        level = { samples: means, columns: outColumns, rows: outRows };
      }
      this.levels.set(k, level);
      return level;
    }

    draw(state, view) {
      const k = CanvasRenderer.blockFor(view);
      const level = this.level(k);
      if (k !== this.block) {
        this.block = k;
        this.canvas.width = level.columns;
        this.canvas.height = level.rows;
        this.pixels = this.context.createImageData(level.columns, level.rows);
        this.out = new Uint32Array(this.pixels.data.buffer);
      }
      const { offset, scale } = this.image;
      const lut = this.lut;
      for (let s = 0; s < lut.length; s++) {
        let y = unit(offset + scale * s, state.center, state.width, state.voiFunction,
                     this.image.voi_lut);
        if (state.invert) y = 1 - y;
        const grey = Math.round(y * 255);
        lut[s] = 0xff000000 | (grey << 16) | (grey << 8) | grey;  // RGBA bytes, little-endian
      }
      const out = this.out;
      const samples = level.samples;
      for (let i = 0; i < samples.length; i++) out[i] = lut[samples[i]];
      this.context.putImageData(this.pixels, 0, 0);
    }

    // A zoom that changes the block size needs a new drawing.
    stale(view) {
      return this.image !== undefined && CanvasRenderer.blockFor(view) !== this.block;
    }

    finish() {}
  }

  function init() {
    const viewport = document.getElementById("viewport");
    let canvas = document.getElementById("image");
    if (!viewport || !canvas || !viewport.dataset.samples) return;
    const stage = document.getElementById("stage");
    const svg = document.getElementById("annotations");
    const overlay = document.getElementById("overlay");
    const zoomLabel = document.getElementById("zoom-level");
    const wcInput = document.getElementById("wc");
    const wwInput = document.getElementById("ww");
    const presetSelect = document.getElementById("preset");
    const invertButton = document.querySelector("[data-action=invert]");
    const readout = document.getElementById("measure-readout");
    const badge = document.getElementById("draft-source-badge");
    const viewLabel = document.getElementById("view-label");
    const markers = { left: document.getElementById("orient-left"), right: document.getElementById("orient-right"),
                      top: document.getElementById("orient-top"), bottom: document.getElementById("orient-bottom") };

    // WebGL2 on a GPU; else the 2D lookup table. ?renderer=webgl2 or canvas2d forces one
    // (WebGL2 then even in software).
    const wanted = new URLSearchParams(window.location.search).get("renderer");
    let renderer = (wanted !== "canvas2d" && WebGLRenderer.create(canvas, wanted !== "webgl2"))
      || new CanvasRenderer(canvas);
    viewport.dataset.renderer = renderer.kind;

    // A canvas that gave a WebGL context gives no 2D one: the 2D path gets a new canvas
    // (an image over the texture size limit, or a lost WebGL context).
    function useCanvas2D() {
      const fresh = canvas.cloneNode(false);
      canvas.replaceWith(fresh);
      canvas = fresh;
      renderer = new CanvasRenderer(canvas);
      viewport.dataset.renderer = renderer.kind;
      api.renderer = renderer.kind;
    }
    canvas.addEventListener("webglcontextlost", (event) => {
      event.preventDefault();
      useCanvas2D();
      if (image) { renderer.load(image); requestDraw(); }
    });
    const view = { scale: 1, x: 0, y: 0, fitted: true };
    const state = { center: 0, width: 1, voiFunction: 0, invert: false };
    let image = null;
    let loadToken = 0;
    let tool = "pan";
    let drawPending = false;
    let drawCount = 0;
    const frames = [];
    const api = { frames, syncTiming: false, renderer: renderer.kind, state, view };
    window.radnodeViewer = api;

    // ---- display -------------------------------------------------------------------------
    function requestDraw() {
      if (drawPending || !image) return;
      drawPending = true;
      window.requestAnimationFrame(drawFrame);
    }

    function drawFrame(timestamp) {
      drawPending = false;
      if (!image) return;
      const started = performance.now();
      renderer.draw(state, view);
      if (api.syncTiming) renderer.finish();
      const ms = performance.now() - started;
      if (frames.length >= MAX_FRAMES_KEPT) frames.shift();
      frames.push({ at: timestamp, ms });
      drawCount += 1;
      viewport.dataset.drawn = String(drawCount);
      viewport.dataset.window = `${state.center}/${state.width}/${state.invert ? 1 : 0}`;
      viewport.dataset.voiFunction = Object.keys(FUNCTIONS)[state.voiFunction];
      viewport.dataset.loaded = "1";
    }

    function showWindow() {
      wcInput.value = String(Math.round(state.center * 100) / 100);
      wwInput.value = String(Math.round(state.width * 100) / 100);
      invertButton.setAttribute("aria-pressed", state.invert ? "true" : "false");
      updateOverlay();
    }

    function updateOverlay() {
      const zoom = `${Math.round(view.scale * 100)}%`;
      zoomLabel.textContent = view.fitted ? `fit ${zoom}` : zoom;
      if (!overlay || !image) return;
      overlay.textContent = `WC ${Math.round(state.center)} WW ${Math.round(state.width)}${state.invert ? " inv" : ""}\n` +
        `${image.columns}×${image.rows} · ${zoom}`;
    }

    function setWindow(center, width, voiFunction) {
      if (!image) return;
      const span = Math.max(image.high - image.low, 1);
      state.center = Math.max(image.low - span, Math.min(image.high + span, center));
      if (voiFunction !== undefined) state.voiFunction = voiFunction;
      else if (state.voiFunction === FUNCTIONS.VOI_LUT) state.voiFunction = FUNCTIONS.LINEAR;  // a window replaces the LUT
      // LINEAR needs a width of at least 1; the other functions any positive width.
      state.width = Math.max(state.voiFunction === FUNCTIONS.LINEAR ? 1 : 1e-6, Math.min(span * 4, width));
      showWindow();
      requestDraw();
    }

    function resetWindow() {
      if (!image) return;
      state.invert = image.photometric === "MONOCHROME1";
      setWindow(image.window.center, image.window.width, FUNCTIONS[image.window.function] ?? 0);
      presetSelect.value = "";
    }

    // ---- zoom and pan --------------------------------------------------------------------
    function apply() {
      stage.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
      if (renderer.stale(view)) requestDraw();
      drawMeasurement();
      updateOverlay();
    }

    function fit() {
      if (!image) return;
      const box = viewport.getBoundingClientRect();
      const scale = Math.min(box.width / image.columns, box.height / image.rows);
      view.scale = Math.max(MIN_SCALE, Math.min(MAX_SCALE, scale));
      view.x = (box.width - image.columns * view.scale) / 2;
      view.y = (box.height - image.rows * view.scale) / 2;
      view.fitted = true;
      apply();
    }

    function zoomAt(factor, clientX, clientY) {
      const box = viewport.getBoundingClientRect();
      const px = clientX === undefined ? box.width / 2 : clientX - box.left;
      const py = clientY === undefined ? box.height / 2 : clientY - box.top;
      const next = Math.max(MIN_SCALE, Math.min(MAX_SCALE, view.scale * factor));
      view.x = px - ((px - view.x) * next) / view.scale;
      view.y = py - ((py - view.y) * next) / view.scale;
      view.scale = next;
      view.fitted = false;
      apply();
    }

    function actualSize() {
      const box = viewport.getBoundingClientRect();
      zoomAt(1 / view.scale, box.left + box.width / 2, box.top + box.height / 2);
    }

    function imagePoint(event) {
      const box = viewport.getBoundingClientRect();
      return { x: (event.clientX - box.left - view.x) / view.scale,
               y: (event.clientY - box.top - view.y) / view.scale };
    }

    // ---- measurement ---------------------------------------------------------------------
    let measurement = null;
    const SVG = "http://www.w3.org/2000/svg";

    function distance(m) {
      const dx = m.x2 - m.x1;
      const dy = m.y2 - m.y1;
      const spacing = image.spacing;
      if (spacing.row_mm === null || spacing.column_mm === null) {
        return { value: Math.hypot(dx, dy), unit: "px", label: "px" };
      }
      return { value: Math.hypot(dx * spacing.column_mm, dy * spacing.row_mm), unit: "mm", label: spacing.label };
    }

    function drawMeasurement() {
      svg.replaceChildren();
      if (!measurement || !image) return;
      const m = measurement;
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", m.x1); line.setAttribute("y1", m.y1);
      line.setAttribute("x2", m.x2); line.setAttribute("y2", m.y2);
      // The stage is scaled by a CSS transform: sizes are divided by the scale to stay put.
      const unitPx = 1 / view.scale;
      line.setAttribute("stroke-width", String(2 * unitPx));
      svg.append(line);
      for (const [x, y] of [[m.x1, m.y1], [m.x2, m.y2]]) {
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", String(4 * unitPx));
        dot.setAttribute("stroke-width", String(1.5 * unitPx));
        svg.append(dot);
      }
      const d = distance(m);
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", String(m.x2 + 8 / view.scale));
      text.setAttribute("y", String(m.y2 - 8 / view.scale));
      text.setAttribute("font-size", String(14 * unitPx));
      text.setAttribute("stroke-width", String(3 * unitPx));
      text.textContent = `${d.value.toFixed(1)} ${d.label}`;
      svg.append(text);
    }

    function showMeasurement() {
      drawMeasurement();
      if (!measurement) {
        readout.textContent = "";
        delete readout.dataset.value;
        delete readout.dataset.unit;
        return;
      }
      const d = distance(measurement);
      readout.textContent = `Distance ${d.value.toFixed(1)} ${d.label}`;
      readout.dataset.value = String(d.value);
      readout.dataset.unit = d.unit;
    }

    function setTool(name) {
      tool = name;
      for (const button of document.querySelectorAll("[data-tool]")) {
        const on = button.dataset.tool === name;
        button.classList.toggle("active", on);
        button.setAttribute("aria-pressed", on ? "true" : "false");
      }
      viewport.classList.toggle("measuring", name === "measure");
    }

    // ---- loading -------------------------------------------------------------------------
    async function fetchOk(url, kind) {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) {
        let detail = `${response.status}`;
        try { detail = (await response.json()).detail || detail; } catch (error) { /* not JSON */ }
        throw new Error(detail);
      }
      return kind === "json" ? response.json() : response.arrayBuffer();
    }

    // The first image's description comes with the page (a JSON data block), and its
    // samples are preloaded from the head: the first load needs no other round trip.
    // Other images (thumbnails) fetch theirs.
    const embedded = {};
    const block = document.getElementById("first-image-description");
    if (block && viewport.dataset.description) {
      try { embedded[viewport.dataset.description] = JSON.parse(block.textContent); }
      catch (error) { /* fetched instead */ }
    }

    function describe(descriptionUrl) {
      const known = embedded[descriptionUrl];
      return known ? Promise.resolve(known) : fetchOk(descriptionUrl, "json");
    }

    async function load(descriptionUrl, samplesUrl, isDraftSource) {
      const token = ++loadToken;
      viewport.dataset.loaded = "0";
      badge.hidden = true;
      try {
        const [description, buffer] = await Promise.all([describe(descriptionUrl),
                                                         fetchOk(samplesUrl, "buffer")]);
       
        if (token !== loadToken) return;
        const samples = new Uint16Array(buffer);
        if (samples.length !== description.rows * description.columns) throw new Error("truncated image data");
        image = { ...description, samples };
        if (!renderer.fits(image)) useCanvas2D();
        renderer.load(image);
        stage.style.width = `${image.columns}px`;
        stage.style.height = `${image.rows}px`;
        // the canvas may hold fewer pixels than the image (2D path zoomed out)
        canvas.style.width = `${image.columns}px`;
        canvas.style.height = `${image.rows}px`;
        svg.setAttribute("viewBox", `0 0 ${image.columns} ${image.rows}`);
        svg.setAttribute("width", String(image.columns));
        svg.setAttribute("height", String(image.rows));
        for (const edge of Object.keys(markers)) markers[edge].textContent = image.orientation[edge] || "";
        viewport.dataset.orientationSource = image.orientation.source;
        viewLabel.textContent = VIEW_LABELS[image.view_position] || image.view_position || "";
        badge.hidden = !isDraftSource;
        presetSelect.replaceChildren(new Option("Presets…", ""));
        image.presets.forEach((preset, index) => presetSelect.append(new Option(preset.name, String(index))));
        measurement = null;
        showMeasurement();
        fit();
        resetWindow();
      } catch (error) {
        if (token !== loadToken) return;
        image = null;
        if (overlay) overlay.textContent = `The image could not be loaded: ${error.message}`;
        viewport.dataset.loaded = "error";
      }
    }

    // ---- pointer -------------------------------------------------------------------------
    let drag = null;
    viewport.addEventListener("contextmenu", (event) => event.preventDefault());
    viewport.addEventListener("pointerdown", (event) => {
      if (!image) return;
      viewport.focus({ preventScroll: true });
      let mode = "pan";
      if (event.button === 2 || event.shiftKey || (event.button === 0 && tool === "window")) mode = "window";
      else if (event.button === 0 && tool === "measure") mode = "measure";
      else if (event.button !== 0) return;
      const point = imagePoint(event);
      drag = { mode, startX: event.clientX, startY: event.clientY, x: view.x, y: view.y,
               center: state.center, width: state.width };
      if (mode === "measure") {
        measurement = { x1: point.x, y1: point.y, x2: point.x, y2: point.y };
        showMeasurement();
      }
      viewport.classList.add(mode === "window" ? "windowing" : mode === "pan" ? "panning" : "measuring");
      viewport.setPointerCapture(event.pointerId);
    });
    viewport.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.startX;
      const dy = event.clientY - drag.startY;
      if (drag.mode === "window") {
        const step = Math.max(image.high - image.low, 1) / 600;
        setWindow(drag.center + dy * step, drag.width + dx * step);
        presetSelect.value = "";
      } else if (drag.mode === "measure") {
        const point = imagePoint(event);
        measurement.x2 = point.x;
        measurement.y2 = point.y;
        showMeasurement();
      } else {
        view.x = drag.x + dx;
        view.y = drag.y + dy;
        view.fitted = false;
        apply();
      }
    });
    function endDrag(event) {
      if (!drag) return;
      drag = null;
      viewport.classList.remove("panning", "windowing");
      if (tool !== "measure") viewport.classList.remove("measuring");
      if (viewport.hasPointerCapture(event.pointerId)) viewport.releasePointerCapture(event.pointerId);
    }
    viewport.addEventListener("pointerup", endDrag);
    viewport.addEventListener("pointercancel", endDrag);
    viewport.addEventListener("wheel", (event) => {
      event.preventDefault();
      zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX, event.clientY);
    }, { passive: false });
    viewport.addEventListener("dblclick", fit);

    // ---- toolbar and keyboard ------------------------------------------------------------
    document.querySelector(".viewer-toolbar").addEventListener("click", (event) => {
      const button = event.target.closest("[data-action], [data-tool]");
      if (!button) return;
      if (button.dataset.tool) { setTool(button.dataset.tool); return; }
      const action = button.dataset.action;
      if (action === "zoom-in") zoomAt(1.25);
      else if (action === "zoom-out") zoomAt(1 / 1.25);
      else if (action === "fit") fit();
      else if (action === "actual") actualSize();
      else if (action === "reset-window") resetWindow();
      else if (action === "invert") { state.invert = !state.invert; showWindow(); requestDraw(); }
    });
    for (const input of [wcInput, wwInput]) {
      input.addEventListener("change", () => {
        const center = Number(wcInput.value);
        const width = Number(wwInput.value);
        if (wcInput.value !== "" && wwInput.value !== "" && Number.isFinite(center) && Number.isFinite(width)) {
          setWindow(center, width);
          presetSelect.value = "";
        }
      });
    }
    presetSelect.addEventListener("change", () => {
      const preset = image && image.presets[Number(presetSelect.value)];
      if (presetSelect.value !== "" && preset) {
        setWindow(preset.center, preset.width, FUNCTIONS[preset.function] ?? 0);
      }
    });

    document.addEventListener("keydown", (event) => {
      if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "+" || event.key === "=") zoomAt(1.25);
      else if (event.key === "-" || event.key === "_") zoomAt(1 / 1.25);
      else if (event.key === "0") fit();
      else if (event.key === "1") actualSize();
      else if (event.key === "r" || event.key === "R") resetWindow();
      else if (event.key === "i" || event.key === "I") { state.invert = !state.invert; showWindow(); requestDraw(); }
      else if (event.key === "m" || event.key === "M") setTool("measure");
      else if (event.key === "p" || event.key === "P") setTool("pan");
      else if (event.key === "w" || event.key === "W") setTool("window");
      else if (event.key === "Escape" && measurement) { measurement = null; showMeasurement(); }
      else return;
      event.preventDefault();
    });

    // thumbnails switch the displayed image
    for (const thumb of document.querySelectorAll(".thumb")) {
      thumb.addEventListener("click", () => {
        if (!thumb.dataset.samples) return;
        for (const other of document.querySelectorAll(".thumb")) {
          other.classList.toggle("active", other === thumb);
          other.setAttribute("aria-selected", other === thumb ? "true" : "false");
        }
        load(thumb.dataset.description, thumb.dataset.samples, thumb.dataset.draftSource === "1");
      });
    }

    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => { if (view.fitted) fit(); }).observe(viewport);
    } else {
      window.addEventListener("resize", () => { if (view.fitted) fit(); });
    }

    load(viewport.dataset.description, viewport.dataset.samples, viewport.dataset.draftSource === "1");
  }

  document.addEventListener("DOMContentLoaded", init);
})();
