// edgecam review page: keyboard shortcuts and in-place decisions (fetch + X-CSRF-Token).
// Without this script every action still works through the page's forms.
(function () {
  "use strict";
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const cards = () => Array.from(document.querySelectorAll(".card"));
  const bulk = document.getElementById("bulk");
  const labelInput = document.getElementById("label-input");
  let pendingTargets = null; // the cards a relabel typed in the bar applies to

  function toast(text) {
    const t = document.createElement("div");
    t.className = "toast";
    t.setAttribute("role", "status");
    t.textContent = text;
    document.body.appendChild(t);
    setTimeout(() => t.remove(), 2500);
  }

  function current() {
    const a = document.activeElement;
    return a && a.classList && a.classList.contains("card") ? a : null;
  }

  function selected() {
    return cards().filter((c) => c.classList.contains("selected"));
  }

  function targets() {
    const s = selected();
    if (s.length) return s;
    const c = current();
    return c ? [c] : [];
  }

  function updateCount() {
    const n = selected().length;
    const el = document.getElementById("selected-count");
    if (el) el.textContent = n + " selected";
  }

  function toggle(card, on) {
    const box = card.querySelector('input[type=checkbox]');
    const value = on === undefined ? !card.classList.contains("selected") : on;
    card.classList.toggle("selected", value);
    if (box) box.checked = value;
    updateCount();
  }

  function move(step) {
    const all = cards();
    if (!all.length) return;
    const c = current();
    let i = c ? all.indexOf(c) + step : 0;
    i = Math.max(0, Math.min(all.length - 1, i));
    all[i].focus();
  }

  function nextPending(after) {
    const all = cards();
    const start = after ? all.indexOf(after) : -1;
    for (let i = start + 1; i < all.length; i++) {
      if (all[i].dataset.status === "pending") return all[i];
    }
    return null;
  }

  async function decide(list, action, label, via) {
    if (!list.length) { toast("choose a sample first (j/k, x)"); return false; }
    const body = { keys: list.map((c) => c.dataset.key), action: action, via: via || "keyboard" };
    if (label) body.label = label;
    let response;
    try {
      response = await fetch("/review/api/decisions", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
    } catch (e) {
      toast("the server cannot be reached: nothing was saved");
      return false;
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      toast((data.error || "refused") + (data.fix ? " — " + data.fix : ""));
      if (response.status === 401) window.location = "/review/login";
      return false;
    }
    const byKey = {};
    for (const d of data.decisions) byKey[d.key] = d;
    for (const c of list) {
      const d = byKey[c.dataset.key];
      if (!d) continue;
      const status = d.action === "reject" ? "rejected" : d.action === "reopen" ? "pending" : "accepted";
      c.dataset.status = status;
      c.className = c.className.replace(/status-\w+/, "status-" + status);
      const badge = c.querySelector(".badge");
      if (badge) badge.textContent = status + (status === "accepted" && d.label ? ": " + d.label : "");
      toggle(c, false);
    }
    toast(action + ": " + data.decisions.length + " sample" + (data.decisions.length === 1 ? "" : "s"));
    const last = list[list.length - 1];
    const next = nextPending(last);
    if (next) next.focus(); else last.focus();
    return true;
  }

  function startRelabel(list) {
    if (!list.length || !labelInput) { toast("choose a sample first (j/k, x)"); return; }
    pendingTargets = list;
    labelInput.value = "";
    labelInput.placeholder = "label for " + list.length + " sample" + (list.length === 1 ? "" : "s");
    labelInput.focus();
  }

  function groupOf(card) {
    const g = card.dataset.group;
    return g ? cards().filter((c) => c.dataset.group === g) : [card];
  }

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (t === labelInput) {
      if (ev.key === "Enter") {
        ev.preventDefault(); // Enter relabels; it never submits the form's first button
        const list = pendingTargets || selected();
        pendingTargets = null;
        const label = labelInput.value.trim();
        if (!list.length) toast("choose a sample first (j/k, x)");
        else if (label) decide(list, "relabel", label, "keyboard").then(() => { labelInput.value = ""; });
        else list[0].focus();
      } else if (ev.key === "Escape") {
        const list = pendingTargets;
        pendingTargets = null;
        if (list && list.length) list[0].focus();
      }
      return;
    }
    if (t && t.name === "label" && t.closest(".group-bar") && ev.key === "Enter") {
      ev.preventDefault();
      const label = t.value.trim();
      if (label) decide(Array.from(t.closest(".group").querySelectorAll(".card")), "relabel", label, "group");
      return;
    }
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const c = current();
    switch (ev.key) {
      case "j": case "ArrowRight": case "ArrowDown": move(1); break;
      case "k": case "ArrowLeft": case "ArrowUp": move(-1); break;
      case "x": if (c) toggle(c); break;
      case "a": decide(targets(), "accept"); break;
      case "r": decide(targets(), "reject"); break;
      case "u": decide(targets(), "reopen"); break;
      case "l": startRelabel(targets()); break;
      case "g": if (c) decide(groupOf(c), "accept", null, "group"); break;
      case "e": case "Enter": if (c) window.location = c.dataset.href; break;
      case "Escape": selected().forEach((s) => toggle(s, false)); break;
      case "?": { const h = document.getElementById("help"); if (h) h.hidden = !h.hidden; break; }
      default: return;
    }
    ev.preventDefault();
  });

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest(".quick button");
    if (button) {
      const card = button.closest(".card");
      if (button.dataset.action === "relabel") startRelabel([card]);
      else decide([card], button.dataset.action, null, "page");
      return;
    }
    const help = ev.target.closest("#help-toggle");
    if (help) { const h = document.getElementById("help"); h.hidden = !h.hidden; }
  });

  document.addEventListener("change", (ev) => {
    const box = ev.target;
    if (box.type === "checkbox" && box.form === bulk) {
      const card = box.closest(".card");
      if (card) toggle(card, box.checked);
    }
  });

  // Bulk and group forms: decide in place instead of reloading the page.
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    const isGroup = form.classList.contains("group-bar");
    if (form !== bulk && !isGroup) return;
    const action = ev.submitter ? ev.submitter.value : "";
    if (!action) return;
    ev.preventDefault();
    const label = (form.querySelector('input[name=label]') || {}).value || "";
    let list;
    if (isGroup) list = Array.from(form.closest(".group").querySelectorAll(".card"));
    else list = pendingTargets || targets();
    if (action === "relabel" && !label.trim()) { toast("type a label first"); return; }
    pendingTargets = null;
    decide(list, action, action === "relabel" ? label.trim() : null, isGroup ? "group" : "bulk");
  });

  const first = nextPending(null) || cards()[0];
  if (first) first.focus({ preventScroll: true });
})();
