// radnode — behaviour shared by every page: the live, keyboard-first worklist, the
// shortcuts overlay ("?"), one-submit forms, confirmations, Ctrl+Enter and periodic
// refresh. No dependencies.
"use strict";

(function () {
  const FALLBACK_POLL_MS = 5000;
  const SELECTION_KEY = "radnode:worklist:selection";

  const typing = (target) => Boolean(target && target.closest && target.closest("input, textarea, select, [contenteditable]"));
  const dialogOpen = () => Boolean(document.querySelector("dialog[open]"));

  // The worklist row to select when the page opens: the study last viewed from this
  // worklist (or the one that followed it, when it has left the list since).
  function rememberedSelection(query) {
    try {
      const value = JSON.parse(window.sessionStorage.getItem(SELECTION_KEY) || "null");
      return value && value.query === query ? value : null;
    } catch (error) { return null; }
  }

  function rememberSelection(query, id, fallback) {
    try {
      window.sessionStorage.setItem(SELECTION_KEY, JSON.stringify({ query, id: String(id || ""), fallback: String(fallback || "") }));
    } catch (error) { /* storage unavailable: the selection starts afresh */ }
  }

  // Keyboard-first worklist: arrow keys or j/k move the selection (aria-selected, focus),
  // Enter opens the study with the worklist's filters; the selection survives live updates
  // and the way back from a study.
  function worklist() {
    const card = document.getElementById("worklist-card");
    if (!card) return null;
    const query = card.dataset.worklistQuery || "";
    let selectedId = null;
    const rows = () => Array.from(card.querySelectorAll("tbody tr[data-study-id]"));
    const href = (row) => row.dataset.href + (query ? `?wl=${encodeURIComponent(query)}` : "");

    function select(row, { focus = true } = {}) {
      for (const other of rows()) {
        const chosen = other === row;
        other.setAttribute("aria-selected", chosen ? "true" : "false");
        other.classList.toggle("selected", chosen);
        other.tabIndex = chosen ? 0 : -1;
      }
      selectedId = row ? row.dataset.studyId : null;
      if (!row) return;
      const next = row.nextElementSibling;
      rememberSelection(query, selectedId, next ? next.dataset.studyId : "");
      if (focus) row.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }

    function open(row) {
      select(row, { focus: false });
      window.location.href = href(row);
    }

    function decorate() {
      for (const row of rows()) {
        const link = row.querySelector("a.rowlink");
        if (link) link.href = href(row);
      }
    }

    function move(step) {
      const list = rows();
      if (!list.length) return;
      const index = list.findIndex((row) => row.dataset.studyId === selectedId);
      const target = index < 0 ? (step > 0 ? 0 : list.length - 1)
        : Math.max(0, Math.min(list.length - 1, index + step));
      select(list[target]);
    }

    card.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-study-id]");
      if (!row || event.target.closest("a, button, input")) return;
      open(row);
    });
    card.addEventListener("focusin", (event) => {
      const row = event.target.closest("tr[data-study-id]");
      if (row && row.dataset.studyId !== selectedId) select(row, { focus: false });
    });
    document.addEventListener("keydown", (event) => {
      if (event.defaultPrevented || typing(event.target) || dialogOpen()
          || event.ctrlKey || event.metaKey || event.altKey) return;
      const list = rows();
      if (event.key === "j" || event.key === "ArrowDown") { move(1); event.preventDefault(); }
      else if (event.key === "k" || event.key === "ArrowUp") { move(-1); event.preventDefault(); }
      else if (event.key === "Home" && list.length) { select(list[0]); event.preventDefault(); }
      else if (event.key === "End" && list.length) { select(list[list.length - 1]); event.preventDefault(); }
      else if (event.key === "Enter") {
        const row = list.find((candidate) => candidate.dataset.studyId === selectedId);
        if (row && !event.target.closest("a, button")) { event.preventDefault(); open(row); }
      }
    });

    // Rows were replaced (live update): keep the same study selected, or the row now in its
    // place when it left the list; keep the focus where it was.
    function rowsReplaced(hadFocus, previousIndex) {
      decorate();
      const list = rows();
      let row = list.find((candidate) => candidate.dataset.studyId === selectedId);
      if (!row && selectedId !== null && list.length) row = list[Math.min(previousIndex, list.length - 1)];
      if (row) select(row, { focus: hadFocus });
    }

    decorate();
    const remembered = rememberedSelection(query);
    if (remembered) {
      const list = rows();
      const row = list.find((candidate) => candidate.dataset.studyId === remembered.id)
        || list.find((candidate) => candidate.dataset.studyId === remembered.fallback);
      if (row) select(row);
    }
    return {
      card,
      replace(html) {
        const active = document.activeElement;
        const hadFocus = Boolean(active && card.contains(active) && active.matches("tr[data-study-id]"));
        const index = rows().findIndex((row) => row.dataset.studyId === selectedId);
        card.innerHTML = html;
        rowsReplaced(hadFocus, Math.max(index, 0));
      },
    };
  }

  // The live worklist: a Server-Sent Events stream says when the rows changed (a digest and
  // the counts, no patient data); the rows are then fetched as an ordinary page request.
  // Without a stream (refused, or a proxy in the way) the page polls the same digest.
  function liveWorklist(list) {
    if (!list) return;
    const card = list.card;
    const status = document.getElementById("live-status");
    const versionOf = () => {
      const marker = card.querySelector("[data-version]");
      return marker ? marker.dataset.version : "";
    };
    let version = versionOf();
    let fetching = null;
    let pending = false;
    let polling = null;

    function setStatus(text) { if (status) status.textContent = text; }

    async function fetchRows() {
      if (fetching) { pending = true; return; }
      fetching = (async () => {
        try {
          const response = await fetch(card.dataset.rowsUrl, {
            headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store",
          });
          if (response.status === 401) { window.location.reload(); return; }
          if (!response.ok) return;
          list.replace(await response.text());
          version = versionOf();
        } catch (error) { /* the next change or poll tries again */ }
      })();
      await fetching;
      fetching = null;
      if (pending) { pending = false; fetchRows(); }
    }

    function apply(data) {
      if (data.counts) {
        for (const element of document.querySelectorAll("[data-count]")) {
          const value = data.counts[element.dataset.count];
          if (value !== undefined && element.textContent !== String(value)) element.textContent = String(value);
        }
      }
      if (data.version && data.version !== version) fetchRows();
    }

    function poll() {
      if (polling) return;
      setStatus("Updates every few seconds.");
      card.dataset.live = "poll";
      const tick = async () => {
        try {
          const response = await fetch(card.dataset.stateUrl, {
            headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
          });
          if (response.status === 401) { window.location.reload(); return; }
          if (response.ok) apply(await response.json());
        } catch (error) { /* network hiccup: the next tick tries again */ }
      };
      polling = window.setInterval(tick, FALLBACK_POLL_MS);
      document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
      tick();
    }

    if (!("EventSource" in window) || !card.dataset.liveUrl) { poll(); return; }
    const source = new EventSource(card.dataset.liveUrl);
    let failures = 0;
    source.addEventListener("open", () => { card.dataset.live = "stream"; setStatus("Live: new studies appear by themselves."); });
    source.addEventListener("worklist", (event) => {
      failures = 0;
      try { apply(JSON.parse(event.data)); } catch (error) { /* malformed event: ignore */ }
    });
    source.addEventListener("logout", () => { source.close(); window.location.reload(); });
    source.addEventListener("error", () => {
      // CLOSED: the node refused the stream (login, too many streams); poll instead.
      // CONNECTING: the browser reconnects by itself, but a stream that keeps failing
      // before its first event (a proxy that cuts it) is given up for polling too.
      failures += 1;
      if (source.readyState === EventSource.CLOSED || failures >= 3) { source.close(); poll(); }
    });
    window.addEventListener("pagehide", () => source.close());
  }

  // "?" shows the page's keyboard shortcuts.
  function shortcuts() {
    const dialog = document.getElementById("shortcuts");
    if (!dialog || typeof dialog.showModal !== "function") return;
    const toggle = () => { if (dialog.open) dialog.close(); else dialog.showModal(); };
    document.addEventListener("keydown", (event) => {
      if (event.key !== "?" || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      if (dialogOpen() && !dialog.open) return;
      event.preventDefault();
      toggle();
    });
    const close = document.getElementById("shortcuts-close");
    if (close) close.addEventListener("click", () => dialog.close());
    const opener = document.getElementById("shortcuts-open");
    if (opener) opener.addEventListener("click", toggle);
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
      // Ctrl+Shift+Enter is "Sign and next" (reading.js).
      if (!(event.ctrlKey || event.metaKey) || event.shiftKey || event.key !== "Enter") return;
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
    liveWorklist(worklist());
    shortcuts();
    forms();
    periodicRefresh();
  });
})();
