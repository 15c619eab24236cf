// approvald control UI: live updates from /events, countdowns, and decisions without a
// reload. Every piece of HTML it inserts comes from the server's own escaped templates.
(function () {
  "use strict";

  const pendingList = document.getElementById("pending-list");
  const resolvedList = document.getElementById("resolved-list");
  const live = document.getElementById("live");

  function human(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function tick() {
    document.querySelectorAll("time.countdown").forEach(function (t) {
      const left = Date.parse(t.dataset.expires) - Date.now();
      t.textContent = left <= 0 ? "expiring now" : "in " + human(left);
      t.classList.toggle("soon", left <= 60000);
    });
  }
  tick();
  setInterval(tick, 1000);

  function say(text) {
    if (live) live.textContent = text;
  }

  function updateCounts() {
    if (!pendingList) return;
    const n = pendingList.querySelectorAll("article.card").length;
    const count = document.getElementById("pending-count");
    if (count) count.textContent = String(n);
    const empty = document.getElementById("empty");
    if (empty) empty.hidden = n > 0;
    document.title = "Pending (" + n + ") · approvald";
  }

  function parse(html) {
    const tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content;
  }

  async function refreshStatus() {
    const panel = document.getElementById("status-panel");
    if (!panel) return;
    const res = await fetch("/ui/fragments/status", { credentials: "same-origin" });
    if (res.status === 401) return signedOut();
    if (res.ok) panel.replaceChildren(parse(await res.text()));
  }

  async function refreshAll() {
    if (!pendingList) return;
    const res = await fetch("/ui/fragments/pending", { credentials: "same-origin" });
    if (res.status === 401) return signedOut();
    if (!res.ok) return;
    pendingList.replaceChildren(parse(await res.text()));
    tick();
    updateCounts();
    refreshStatus();
  }

  function signedOut() {
    say("Your session ended; sign in again.");
    window.location.assign("/ui/login");
  }

  // Fetch one card as the server renders it now and put it where its state says.
  async function refreshCard(id, note) {
    const res = await fetch("/ui/fragments/card/" + encodeURIComponent(id), { credentials: "same-origin" });
    if (res.status === 401) return signedOut();
    if (!res.ok) return;
    const fresh = parse(await res.text()).firstElementChild;
    if (!fresh) return;
    const old = document.getElementById("card-" + id);
    if (old) {
      // Keep what the person was typing and any message they were shown.
      const reason = old.querySelector("input[name=reason]");
      const freshReason = fresh.querySelector("input[name=reason]");
      if (reason && freshReason) freshReason.value = reason.value;
      const msg = old.querySelector(".card-msg");
      const freshMsg = fresh.querySelector(".card-msg");
      if (msg && freshMsg && !msg.hidden) {
        freshMsg.textContent = msg.textContent;
        freshMsg.className = msg.className;
        freshMsg.hidden = false;
      }
    }
    if (note) showMessage(fresh, note.text, note.kind);
    const focused = old && old.contains(document.activeElement) ? document.activeElement : null;
    if (fresh.dataset.status === "pending") {
      if (old && old.parentElement === pendingList) old.replaceWith(fresh);
      else if (pendingList && !old) pendingList.prepend(fresh);
      else if (old) old.replaceWith(fresh);
    } else {
      if (old) old.remove();
      if (resolvedList) {
        resolvedList.prepend(fresh);
        while (resolvedList.children.length > 20) resolvedList.lastElementChild.remove();
      } else if (old) {
        // The detail page: show the new state in place.
        document.querySelector(".cards").replaceChildren(fresh);
      }
    }
    if (focused && focused.name) {
      const again = fresh.querySelector("[name='" + focused.name + "']");
      if (again) again.focus();
    }
    tick();
    updateCounts();
    return fresh;
  }

  function showMessage(card, text, kind) {
    const msg = card.querySelector(".card-msg");
    if (!msg) return;
    msg.textContent = text;
    msg.className = "card-msg " + kind;
    msg.hidden = false;
  }

  // Decide in place; without this script the form posts and the page reloads.
  document.addEventListener("submit", async function (ev) {
    const form = ev.target;
    if (!form.classList || !form.classList.contains("decide")) return;
    ev.preventDefault();
    const card = form.closest("article.card");
    const id = card.dataset.id;
    const body = new URLSearchParams(new FormData(form));
    if (ev.submitter && ev.submitter.name) body.set(ev.submitter.name, ev.submitter.value);
    const buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    let answer;
    try {
      const res = await fetch(form.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (res.status === 401) return signedOut();
      answer = await res.json().catch(function () {
        return { ok: false, message: "Unexpected answer from approvald (HTTP " + res.status + ")." };
      });
    } catch (e) {
      answer = { ok: false, message: "approvald could not be reached; nothing was decided." };
    }
    buttons.forEach(function (b) { b.disabled = false; });
    const note = { text: answer.message, kind: answer.ok ? "ok" : "refused" };
    showMessage(card, note.text, note.kind);
    say(note.text);
    // Show the true state, whoever won.
    await refreshCard(id, note);
    refreshStatus();
  });

  if (!pendingList || !window.EventSource) return;

  const es = new EventSource("/events");
  let wasDown = false;
  es.addEventListener("open", function () {
    say("Live updates on.");
    // Events may have been missed while disconnected: catch up.
    if (wasDown) refreshAll();
    wasDown = false;
  });
  es.addEventListener("error", function () {
    wasDown = true;
    say("Live updates interrupted; reconnecting…");
  });

  function on(name, idOf, announce) {
    es.addEventListener(name, async function (e) {
      let data;
      try { data = JSON.parse(e.data); } catch (_) { return; }
      const id = idOf(data);
      if (!id) return;
      await refreshCard(id);
      if (announce) say(announce(data));
      refreshStatus();
    });
  }
  const byId = function (d) { return d.id; };
  on("tool.approval.requested", byId, function (d) { return "New request: " + d.request.tool; });
  on("tool.approval.updated", function (d) { return d.approval && d.approval.id; }, function (d) { return d.progress || "Request updated."; });
  on("approvald.delivered", byId);
  on("approvald.delivery_failed", byId, function () { return "A prompt could not be delivered."; });
  on("tool.approval.resolved", byId, function (d) {
    const who = d.decided_by ? " by " + d.decided_by.display_name + " via " + d.decided_by.transport : "";
    return (d.decision === "deny" ? "Denied" : "Approved") + who + ".";
  });
  on("tool.approval.expired", byId, function () { return "A request expired without a decision."; });
  es.addEventListener("approvald.lagged", refreshAll);
})();
