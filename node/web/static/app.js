// radnode — behaviour shared by every page: live worklist counts, keyboard navigation,
// one-submit forms, confirmations, Ctrl+Enter and periodic refresh. No dependencies.
"use strict";

(function () {
  const COUNTS_URL = "/api/worklist/counts";
  const POLL_MS = 5000;

  function pollCounts() {
    const nav = document.getElementById("state-counts");
    if (!nav) return;
    const initialDrafted = Number(nav.dataset.initialDrafted);
    const initialUrgent = Number(nav.dataset.initialUrgent);
    const notice = document.getElementById("worklist-changed");
    async function refresh() {
      try {
        const response = await fetch(COUNTS_URL, {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
          cache: "no-store",
        });
        if (response.status === 401) { window.location.reload(); return; }
        if (!response.ok) return;
        const data = await response.json();
        for (const element of document.querySelectorAll("[data-count]")) {
          const value = data.counts[element.dataset.count];
          if (value !== undefined && element.textContent !== String(value)) {
            element.textContent = String(value);
          }
        }
        if (notice && (data.counts.DRAFTED !== initialDrafted || data.counts.URGENT !== initialUrgent)) {
          notice.hidden = false;
        }
      } catch (error) {
        // network hiccup: try again at the next tick
      }
    }
    window.setInterval(refresh, POLL_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  }

  function worklistNavigation() {
    const table = document.getElementById("worklist");
    if (!table) return;
    const rows = Array.from(table.querySelectorAll("tbody tr[data-href]"));
    let index = -1;
    function select(next) {
      if (!rows.length) return;
      index = Math.max(0, Math.min(rows.length - 1, next));
      rows.forEach((row, i) => row.classList.toggle("selected", i === index));
      rows[index].scrollIntoView({ block: "nearest" });
    }
    table.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-href]");
      if (!row || event.target.closest("a, button, input")) return;
      window.location.href = row.dataset.href;
    });
    document.addEventListener("keydown", (event) => {
      if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "j" || event.key === "ArrowDown") { select(index + 1); event.preventDefault(); }
      else if (event.key === "k" || event.key === "ArrowUp") { select(index - 1); event.preventDefault(); }
      else if (event.key === "Enter" && index >= 0) { window.location.href = rows[index].dataset.href; }
    });
  }

  function forms() {
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
    for (const form of document.querySelectorAll("form[data-once]")) {
      form.addEventListener("submit", (event) => {
        if (event.defaultPrevented) return;
        if (form.dataset.submitted) { event.preventDefault(); return; }
        form.dataset.submitted = "1";
        window.setTimeout(() => {
          for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = true;
        }, 0);
      });
    }
    document.addEventListener("keydown", (event) => {
      if (!(event.ctrlKey || event.metaKey) || event.key !== "Enter") return;
      const candidates = Array.from(document.querySelectorAll("form[data-hotkey='ctrl-enter']"))
        .filter((form) => form.offsetParent !== null);
      const active = document.activeElement ? document.activeElement.closest("form") : null;
      const form = candidates.includes(active) ? active : candidates[0];
      if (!form) return;
      event.preventDefault();
      form.requestSubmit();
    });
    for (const link of document.querySelectorAll("[data-reload]")) {
      link.addEventListener("click", (event) => { event.preventDefault(); window.location.reload(); });
    }
  }

  function periodicRefresh() {
    const seconds = Number(document.body.dataset.refresh || 0);
    if (seconds > 0) {
      window.setTimeout(() => { if (!document.hidden) window.location.reload(); else periodicRefresh(); },
        seconds * 1000);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    pollCounts();
    worklistNavigation();
    forms();
    periodicRefresh();
  });
})();
