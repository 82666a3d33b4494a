// Track whether the dashboard socket is open: the panels poll only while it is not,
// so a dropped socket never leaves the page silently frozen.
(function () {
  function setLive(live) {
    document.body.classList.toggle("ws-live", live);
  }
  document.addEventListener("htmx:wsOpen", function () { setLive(true); });
  document.addEventListener("htmx:wsClose", function () { setLive(false); });
  document.addEventListener("htmx:wsError", function () { setLive(false); });
})();

// The swap panel (templates/dashboard/partials/swap_card.html): a running swap's elapsed
// time moves between pushes. The server renders the seconds elapsed at render time; the
// ticker adds the time since the element arrived, so client and server clocks never mix.
(function () {
  function format(seconds) {  // as dashboard/panels/swaps.py format_seconds
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const whole = Math.floor(seconds);
    return Math.floor(whole / 60) + " min " + String(whole % 60).padStart(2, "0") + " s";
  }
  function tick() {
    const now = performance.now();
    const running = ".swap-elapsed[data-running], .swap-phase-elapsed[data-running]";
    document.querySelectorAll(running).forEach(function (el) {
      if (el.arrivedAt === undefined) el.arrivedAt = now;
      el.textContent = format(parseFloat(el.dataset.elapsed) + (now - el.arrivedAt) / 1000);
    });
  }
  setInterval(tick, 250);

  // Pushes replace the whole history when a swap ends: keep open log entries open (the
  // re-opened entry fetches its log again through its "toggle" trigger).
  const openLogs = new Set();
  document.addEventListener("toggle", function (event) {
    const entry = event.target;
    if (!(entry instanceof HTMLDetailsElement) || !entry.classList.contains("swap-past")) return;
    if (entry.open) openLogs.add(entry.id); else openLogs.delete(entry.id);
  }, true);
  document.addEventListener("htmx:load", function (event) {
    openLogs.forEach(function (id) {
      const entry = document.getElementById(id);
      if (entry && !entry.open && event.target.contains(entry)) entry.open = true;
    });
  });
})();

// Countdowns (the lock banner, templates/dashboard/partials/lock_banner.html): elements with
// data-expires-at. The server renders data-seconds-left at render time and the ticker takes
// off the time since the element arrived, so a browser clock that is off never shows a wrong
// countdown (data-expires-at alone is used only without it). A ".countdown" shows the time
// left. At zero the nearest [data-hide-on-expiry] (the element or an ancestor) is hidden and
// a bubbling "countdown-ended" event lets the panel fetch the server's state: an expiry is
// silent, nothing is pushed for it.
(function () {
  function format(seconds) {  // as dashboard/coordination.py format_countdown
    const whole = Math.max(0, Math.ceil(seconds));
    const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
    const ss = String(s).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + ss : m + ":" + ss;
  }
  function secondsLeft(el, now) {
    if (el.dataset.secondsLeft === undefined) {
      return (Date.parse(el.dataset.expiresAt) - Date.now()) / 1000;
    }
    if (el.countdownArrivedAt === undefined) el.countdownArrivedAt = now;
    return parseFloat(el.dataset.secondsLeft) - (now - el.countdownArrivedAt) / 1000;
  }
  function tick() {
    const now = performance.now();
    document.querySelectorAll("[data-expires-at]").forEach(function (el) {
      if (el.countdownEnded) return;
      const left = secondsLeft(el, now);
      if (el.classList.contains("countdown")) el.textContent = format(left);
      if (left > 0) return;
      el.countdownEnded = true;
      const hide = el.closest("[data-hide-on-expiry]");
      if (hide) hide.hidden = true;
      el.dispatchEvent(new CustomEvent("countdown-ended", {bubbles: true}));
    });
  }
  setInterval(tick, 250);
  document.addEventListener("htmx:load", tick);
})();

// Panel actions (force release, redeliver): elements with data-refresh call the API with
// hx-swap="none"; on success their panel is fetched again at once (a push may follow, or
// not reach this page), on failure the API's error message goes into the nearest
// output.action-error.
(function () {
  document.addEventListener("htmx:afterRequest", function (event) {
    const elt = event.detail.elt;
    if (!(elt instanceof Element) || !elt.matches("[data-refresh]")) return;
    const output = elt.querySelector("output.action-error") ||
      (elt.parentElement && elt.parentElement.querySelector("output.action-error"));
    if (event.detail.successful) {
      if (output) output.textContent = "";
      if (elt.dataset.keepValues) keptValues.delete(elt.dataset.keepValues);
      htmx.ajax("GET", elt.dataset.refreshUrl, {target: elt.dataset.refresh, swap: "outerHTML"});
      return;
    }
    const xhr = event.detail.xhr;
    let message = xhr && xhr.status ? "failed: HTTP " + xhr.status : "failed: no response";
    try { message = JSON.parse(xhr.responseText).error.message || message; } catch (e) { /* keep it */ }
    if (output) output.textContent = message;
  });

  // Re-renders (pushes, polls) must not close an open form or drop what was typed into it:
  // <details data-keep-open id=...> re-open, <form data-keep-values="key"> get their values
  // back. Keys carry the lock generation, so a new grant starts from a closed, empty form.
  const openDetails = new Set();
  const keptValues = new Map();
  document.addEventListener("toggle", function (event) {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.hasAttribute("data-keep-open")) return;
    if (details.open) openDetails.add(details.id); else openDetails.delete(details.id);
  }, true);
  document.addEventListener("input", function (event) {
    const form = event.target.form;
    if (!form || !form.dataset.keepValues || !event.target.name) return;
    const values = keptValues.get(form.dataset.keepValues) || {};
    values[event.target.name] = event.target.value;
    keptValues.set(form.dataset.keepValues, values);
  });
  document.addEventListener("htmx:load", function (event) {
    openDetails.forEach(function (id) {
      const details = document.getElementById(id);
      if (details && !details.open && event.target.contains(details)) details.open = true;
    });
    event.target.querySelectorAll("form[data-keep-values]").forEach(function (form) {
      const values = keptValues.get(form.dataset.keepValues);
      if (!values) return;
      Object.keys(values).forEach(function (name) {
        if (form.elements[name]) form.elements[name].value = values[name];
      });
    });
  });
})();

// Service Disable / Enable buttons: PATCH /api/services/{name} takes JSON (htmx's
// json-enc is not vendored). On success the panel is fetched again at once (the API also
// pushes it to every dashboard); a failure's message goes into #services-error.
(function () {
  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]; }
    catch (e) { return ""; }
  }
  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-edit-url]");
    if (!button) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const output = document.getElementById("services-error");
    button.disabled = true;
    let message = "";
    try {
      const response = await fetch(button.dataset.editUrl, {
        method: "PATCH",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: button.dataset.edit,
      });
      if (!response.ok) {
        message = "failed: HTTP " + response.status;
        try { message = (await response.json()).error.message || message; } catch (e) { /* keep it */ }
      }
    } catch (e) {
      message = "failed: no response";
    }
    if (output) output.textContent = message;
    button.disabled = false;
    const panel = document.getElementById("services-panel");
    if (!message && panel) htmx.ajax("GET", panel.getAttribute("hx-get"), { target: "#services-panel", swap: "outerHTML" });
  });
})();
