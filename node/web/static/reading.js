// The reading room's safety nets on the study page: nothing typed is lost.
// * the text being edited is saved on the node (debounced) and in this browser;
// * Sign and Amend are sent with fetch, so a refusal (expired login, conflict, full storage)
//   leaves the text on screen with a message;
// * signing an unedited urgent draft asks for a confirmation first (Ctrl+Enter too);
// * a heartbeat tells the node the study is open and shows colleagues who have it open;
// * keys walk the worklist: Ctrl+Shift+Enter signs and opens the next study, Alt+→/Alt+←
//   open the next/previous study without signing, Esc goes back to the worklist.
(() => {
  "use strict";

  const csrfToken = () => {
    const meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.content : "";
  };
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (date) => `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;

  function storageKey(form) {
    return `radnode:text:${form.dataset.userId}:${form.dataset.reportId}`;
  }

  function readLocal(form) {
    try {
      const value = JSON.parse(window.localStorage.getItem(storageKey(form)) || "null");
      return value && typeof value.findings === "string" ? value : null;
    } catch (error) {
      return null;
    }
  }

  function writeLocal(form, text) {
    try {
      window.localStorage.setItem(storageKey(form), JSON.stringify({ ...text, at: Date.now() }));
    } catch (error) { /* private mode or quota: the node's copy remains */ }
  }

  function clearLocal(form) {
    try { window.localStorage.removeItem(storageKey(form)); } catch (error) { /* ignore */ }
  }

  function textOf(form) {
    return { findings: form.elements.findings.value, impression: form.elements.impression.value };
  }

  function showMessage(text, html) {
    const box = document.getElementById("sign-message");
    if (!box) return;
    if (html) box.replaceChildren(...html); else box.textContent = text;
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  }

  function expiredMessage() {
    const link = document.createElement("a");
    link.href = `/login?next=${encodeURIComponent(window.location.pathname)}`;
    link.textContent = "log in again";
    link.id = "login-again";
    return [document.createTextNode("Your login expired — "), link,
            document.createTextNode("; your text is kept.")];
  }

  function keepText(form) {
    const status = form.querySelector(".save-status");
    const url = form.dataset.autosaveUrl;
    const delay = Number(form.dataset.autosaveMs || 2000);
    let timer = null;
    let lastSaved = JSON.stringify(textOf(form));
    let note = "";

    // Restore what this browser holds if it is newer than the node's copy.
    const local = readLocal(form);
    const serverAt = form.dataset.savedAt ? Date.parse(form.dataset.savedAt) : 0;
    if (local && local.at > serverAt
        && (local.findings !== textOf(form).findings || local.impression !== textOf(form).impression)) {
      form.elements.findings.value = local.findings;
      form.elements.impression.value = local.impression;
      note = "restored from this browser; ";
      if (status) status.textContent = `${note}not yet saved on the node`;
      lastSaved = "";
    }

    async function save() {
      timer = null;
      const text = textOf(form);
      const body = JSON.stringify(text);
      if (!url || body === lastSaved) return;
      try {
        const response = await fetch(url, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json",
                     "X-CSRF-Token": csrfToken() },
          body: JSON.stringify({ report_id: Number(form.dataset.reportId), ...text }),
        });
        if (response.ok) {
          lastSaved = body;
          note = "";
          if (status) status.textContent = `saved ${clock(new Date())}`;
        } else if (response.status === 401) {
          if (status) status.textContent = `${note}not saved on the node: login expired (kept in this browser)`;
          showMessage("", expiredMessage());
        } else if (status) {
          status.textContent = `${note}not saved on the node (kept in this browser)`;
        }
      } catch (error) {
        if (status) status.textContent = `${note}node unreachable: kept in this browser`;
      }
    }

    form.addEventListener("input", () => {
      writeLocal(form, textOf(form));
      if (status) status.textContent = "editing…";
      if (timer) window.clearTimeout(timer);
      timer = window.setTimeout(save, delay);
    });
    if (lastSaved === "" && url) save();
    return {
      cancel() {
        if (timer) window.clearTimeout(timer);
        timer = null;
      },
      flush() {
        if (timer) { window.clearTimeout(timer); }
        return save();
      },
    };
  }

  function confirmUrgent() {
    const dialog = document.getElementById("urgent-confirm");
    if (!dialog || typeof dialog.showModal !== "function") {
      return Promise.resolve(window.confirm("Sign this unedited urgent draft?"));
    }
    return new Promise((resolve) => {
      const back = document.getElementById("urgent-confirm-back");
      const sign = document.getElementById("urgent-confirm-sign");
      const done = (answer) => {
        back.removeEventListener("click", onBack);
        sign.removeEventListener("click", onSign);
        dialog.removeEventListener("cancel", onBack);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onBack = (event) => { event.preventDefault(); done(false); };
      const onSign = () => done(true);
      back.addEventListener("click", onBack);
      sign.addEventListener("click", onSign);
      dialog.addEventListener("cancel", onBack);
      dialog.showModal();
      back.focus();
    });
  }

  function fetchSubmit(form, saver) {
    let busy = false;
    const buttons = () => form.querySelectorAll("button[type=submit]");
    async function send(extra) {
      const data = new FormData(form);
      for (const [name, value] of Object.entries(extra)) data.set(name, value);
      writeLocal(form, textOf(form));
      return fetch(form.action, {
        method: "POST", credentials: "same-origin", body: data,
        headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
      });
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (busy) return;
      busy = true;
      // "Sign and next" is the same form sent by another button: carry its value.
      const submitter = event.submitter;
      const chosen = submitter && submitter.name ? { [submitter.name]: submitter.value } : {};
      if (saver) saver.cancel();  // a save landing after the signature would outlive it
      for (const button of buttons()) button.disabled = true;
      const message = document.getElementById("sign-message");
      if (message) message.hidden = true;
      try {
        let response = await send(chosen);
        if (response.status === 428) {
          if (await confirmUrgent()) response = await send({ ...chosen, confirm_urgent: "1" });
          else { form.elements.findings.focus(); return; }
        }
        if (response.status === 401) { showMessage("", expiredMessage()); return; }
        let body = {};
        try { body = await response.json(); } catch (error) { body = {}; }
        if (response.ok && body.redirect) {
          clearLocal(form);
          window.location.assign(body.redirect);
          return;
        }
        if (response.status === 409 && body.redirect) {
          // Someone signed first; the node kept this text as a working copy and shows both.
          window.location.assign(body.redirect);
          return;
        }
        showMessage(body.detail || `The node answered ${response.status}; your text is kept.`);
        if (saver) saver.flush();
      } catch (error) {
        showMessage("The node cannot be reached; your text is kept in this browser. Try again.");
      } finally {
        busy = false;
        for (const button of buttons()) button.disabled = false;
      }
    });
  }

  function presence() {
    const badge = document.getElementById("presence");
    if (!badge) return;
    const interval = Math.max(Number(badge.dataset.intervalMs || 15000), 200);
    async function beat() {
      try {
        const response = await fetch(badge.dataset.url, {
          method: "POST", credentials: "same-origin",
          headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
        });
        if (response.ok) {
          const readers = (await response.json()).readers || [];
          badge.textContent = readers.length ? `Open by ${readers.join(", ")}` : "";
          badge.hidden = readers.length === 0;
        }
      } catch (error) { /* the next beat tries again */ }
      window.setTimeout(beat, interval);
    }
    beat();
  }

  // Text kept in this browser for longer than a day is dropped (the node keeps its copy).
  function pruneLocal() {
    try {
      const cutoff = Date.now() - 24 * 3600 * 1000;
      for (let i = window.localStorage.length - 1; i >= 0; i -= 1) {
        const key = window.localStorage.key(i);
        if (!key || !key.startsWith("radnode:text:")) continue;
        let at = 0;
        try { at = Number(JSON.parse(window.localStorage.getItem(key) || "{}").at || 0); } catch (e) { at = 0; }
        if (at < cutoff) window.localStorage.removeItem(key);
      }
    } catch (error) { /* storage unavailable */ }
  }

  const typing = (target) => Boolean(target && target.closest && target.closest("input, textarea, select, [contenteditable]"));
  const SELECTION_KEY = "radnode:worklist:selection";

  // The worklist selects this study when the user goes back to it (or the next one, once
  // this one has left the list).
  function rememberStudy(nav) {
    const nextMatch = (nav.dataset.nextUrl || "").match(/^\/studies\/(\d+)/);
    const worklist = new URL(nav.dataset.worklistUrl, window.location.href);
    try {
      window.sessionStorage.setItem(SELECTION_KEY, JSON.stringify({
        query: worklist.search.replace(/^\?/, ""), id: nav.dataset.studyId,
        fallback: nextMatch ? nextMatch[1] : "",
      }));
    } catch (error) { /* storage unavailable */ }
  }

  function studyKeys() {
    const nav = document.getElementById("study-nav");
    if (!nav) return;
    rememberStudy(nav);
    document.addEventListener("keydown", (event) => {
      if (event.defaultPrevented || document.querySelector("dialog[open]")) return;
      if ((event.ctrlKey || event.metaKey) && event.shiftKey && event.key === "Enter") {
        const button = document.getElementById("sign-next-button");
        if (button && button.offsetParent !== null && !button.disabled) {
          event.preventDefault();
          button.form.requestSubmit(button);
        }
        return;
      }
      if (event.altKey && !event.ctrlKey && !event.metaKey
          && (event.key === "ArrowRight" || event.key === "ArrowLeft")) {
        const url = event.key === "ArrowRight" ? nav.dataset.nextUrl : nav.dataset.previousUrl;
        event.preventDefault();  // never the browser's history navigation
        if (url) window.location.assign(url);
        return;
      }
      if (event.key === "Escape" && !event.ctrlKey && !event.metaKey && !event.altKey) {
        event.preventDefault();
        if (typing(event.target)) { event.target.blur(); return; }  // first leave the field
        window.location.assign(nav.dataset.worklistUrl);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    studyKeys();
    pruneLocal();
    for (const form of document.querySelectorAll("form[data-keep-text]")) {
      const saver = form.dataset.autosaveUrl ? keepText(form) : null;
      fetchSubmit(form, saver);
    }
    presence();
  });
})();
