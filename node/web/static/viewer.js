// radnode — image viewer of the study page: zoom and pan in the browser, window/level
// rendered by the server (the image is reloaded with ?wc=&ww=). No dependencies.
"use strict";

(function () {
  const MIN_SCALE = 0.05;
  const MAX_SCALE = 16;
  const RELOAD_DELAY_MS = 120;

  function init() {
    const viewport = document.getElementById("viewport");
    const image = document.getElementById("image");
    if (!viewport || !image) return;
    const overlay = document.getElementById("overlay");
    const zoomLabel = document.getElementById("zoom-level");
    const wcInput = document.getElementById("wc");
    const wwInput = document.getElementById("ww");

    const view = { scale: 1, x: 0, y: 0, fitted: true };
    const windowState = { center: null, width: null, low: 0, high: 4095, defaultCenter: null, defaultWidth: null };
    let base = image.dataset.base;
    let reloadTimer = null;

    function readWindow(source) {
      const number = (value) => (value === undefined || value === "" ? null : Number(value));
      windowState.defaultCenter = number(source.dataset.wc);
      windowState.defaultWidth = number(source.dataset.ww);
      windowState.center = windowState.defaultCenter;
      windowState.width = windowState.defaultWidth;
      windowState.low = number(source.dataset.low) ?? 0;
      windowState.high = number(source.dataset.high) ?? 4095;
      showWindow();
    }

    function showWindow() {
      wcInput.value = windowState.center === null ? "" : String(Math.round(windowState.center));
      wwInput.value = windowState.width === null ? "" : String(Math.round(windowState.width));
      updateOverlay();
    }

    function updateOverlay() {
      const zoom = `${Math.round(view.scale * 100)}%`;
      zoomLabel.textContent = view.fitted ? `fit ${zoom}` : zoom;
      const wl = windowState.center === null ? "DICOM VOI" :
        `WC ${Math.round(windowState.center)} WW ${Math.round(windowState.width)}`;
      if (overlay) overlay.textContent = `${wl}\n${image.naturalWidth}×${image.naturalHeight} · ${zoom}`;
    }

    function apply() {
      image.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
      updateOverlay();
    }

    function fit() {
      if (!image.naturalWidth) return;
      const box = viewport.getBoundingClientRect();
      const scale = Math.min(box.width / image.naturalWidth, box.height / image.naturalHeight);
      view.scale = Math.max(MIN_SCALE, Math.min(MAX_SCALE, scale));
      view.x = (box.width - image.naturalWidth * view.scale) / 2;
      view.y = (box.height - image.naturalHeight * view.scale) / 2;
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

    function scheduleReload() {
      window.clearTimeout(reloadTimer);
      reloadTimer = window.setTimeout(() => {
        if (windowState.center === null || windowState.width === null) {
          image.src = base;
        } else {
          const wc = windowState.center.toFixed(1);
          const ww = Math.max(1, windowState.width).toFixed(1);
          image.src = `${base}?wc=${encodeURIComponent(wc)}&ww=${encodeURIComponent(ww)}`;
        }
      }, RELOAD_DELAY_MS);
    }

    function resetWindow() {
      windowState.center = windowState.defaultCenter;
      windowState.width = windowState.defaultWidth;
      showWindow();
      scheduleReload();
    }

    function setWindow(center, width) {
      const span = Math.max(windowState.high - windowState.low, 1);
      windowState.center = Math.max(windowState.low - span, Math.min(windowState.high + span, center));
      windowState.width = Math.max(1, Math.min(span * 4, width));
      showWindow();
      scheduleReload();
    }

    // pointer: left drag pans; right drag or shift+drag sets the window
    let drag = null;
    viewport.addEventListener("contextmenu", (event) => event.preventDefault());
    viewport.addEventListener("pointerdown", (event) => {
      viewport.focus({ preventScroll: true });
      const windowing = event.button === 2 || event.shiftKey;
      if (windowing && windowState.center === null) {
        const span = windowState.high - windowState.low;
        windowState.center = windowState.low + span / 2;
        windowState.width = span;
      }
      drag = { windowing, startX: event.clientX, startY: event.clientY, x: view.x, y: view.y,
               center: windowState.center, width: windowState.width };
      viewport.classList.add(windowing ? "windowing" : "panning");
      viewport.setPointerCapture(event.pointerId);
    });
    viewport.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.startX;
      const dy = event.clientY - drag.startY;
      if (drag.windowing) {
        const step = Math.max(windowState.high - windowState.low, 1) / 600;
        setWindow(drag.center + dy * step, drag.width + dx * step);
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
      if (viewport.hasPointerCapture(event.pointerId)) viewport.releasePointerCapture(event.pointerId);
    }
    viewport.addEventListener("pointerup", endDrag);
    viewport.addEventListener("pointercancel", endDrag);
    viewport.addEventListener("wheel", (event) => {
      event.preventDefault();
      zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX, event.clientY);
    }, { passive: false });
    viewport.addEventListener("dblclick", fit);

    // toolbar
    document.querySelector(".viewer-toolbar").addEventListener("click", (event) => {
      const button = event.target.closest("[data-action]");
      if (!button) return;
      const action = button.dataset.action;
      if (action === "zoom-in") zoomAt(1.25);
      else if (action === "zoom-out") zoomAt(1 / 1.25);
      else if (action === "fit") fit();
      else if (action === "actual") actualSize();
      else if (action === "reset-window") resetWindow();
    });
    for (const input of [wcInput, wwInput]) {
      input.addEventListener("change", () => {
        const center = Number(wcInput.value);
        const width = Number(wwInput.value);
        if (wcInput.value !== "" && wwInput.value !== "" && Number.isFinite(center) && Number.isFinite(width)) {
          setWindow(center, width);
        }
      });
    }

    // keyboard (not while typing the report)
    document.addEventListener("keydown", (event) => {
      if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "+" || event.key === "=") zoomAt(1.25);
      else if (event.key === "-" || event.key === "_") zoomAt(1 / 1.25);
      else if (event.key === "0") fit();
      else if (event.key === "1") actualSize();
      else if (event.key === "r" || event.key === "R") resetWindow();
      else return;
      event.preventDefault();
    });

    // thumbnails switch the displayed image
    for (const thumb of document.querySelectorAll(".thumb")) {
      thumb.addEventListener("click", () => {
        for (const other of document.querySelectorAll(".thumb")) {
          other.classList.toggle("active", other === thumb);
          other.setAttribute("aria-selected", other === thumb ? "true" : "false");
        }
        base = thumb.dataset.src;
        view.fitted = true;
        readWindow(thumb);
        image.src = base;
      });
    }

    let firstLoad = true;
    image.addEventListener("load", () => {
      if (firstLoad || view.fitted) fit(); else updateOverlay();
      firstLoad = false;
      viewport.dataset.loaded = "1";
    });
    image.addEventListener("error", () => {
      if (overlay) overlay.textContent = "The image could not be loaded.";
    });
    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => { if (view.fitted) fit(); }).observe(viewport);
    } else {
      window.addEventListener("resize", () => { if (view.fitted) fit(); });
    }

    readWindow(image);
    if (image.complete && image.naturalWidth) { fit(); viewport.dataset.loaded = "1"; }
  }

  document.addEventListener("DOMContentLoaded", init);
})();
