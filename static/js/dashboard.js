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

// Re-renders (pushes, polls) must not close an open form or drop what was typed into it:
// <details data-keep-open id=...> re-open, <form data-keep-values="key"> get their values back
// (text and ticked boxes). Keys carry the lock generation or the endpoint id, so a new grant
// starts from a closed, empty form. A form's post that succeeded forgets its values; the
// posts themselves are plain htmx (dashboard/actions.py answers with the fragment to swap).
(function () {
  const openDetails = new Set();
  const keptValues = new Map();
  document.addEventListener("toggle", function (event) {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.hasAttribute("data-keep-open")) return;
    if (details.open) openDetails.add(details.id); else openDetails.delete(details.id);
  }, true);
  function snapshot(form) {
    const values = {};
    Array.from(form.elements).forEach(function (field) {
      if (!field.name) return;
      if (field.type === "checkbox") values[field.name + "=" + field.value] = field.checked;
      else values[field.name] = field.value;
    });
    return values;
  }
  function restore(form, values) {
    Array.from(form.elements).forEach(function (field) {
      if (!field.name) return;
      const key = field.type === "checkbox" ? field.name + "=" + field.value : field.name;
      if (!(key in values)) return;
      if (field.type === "checkbox") field.checked = values[key]; else field.value = values[key];
    });
  }
  function remember(event) {
    const form = event.target.form;
    if (form && form.dataset.keepValues) keptValues.set(form.dataset.keepValues, snapshot(form));
  }
  document.addEventListener("input", remember);
  document.addEventListener("change", remember);
  document.addEventListener("htmx:afterRequest", function (event) {
    const form = event.detail.elt;
    if (form instanceof HTMLFormElement && form.dataset.keepValues && event.detail.successful) {
      keptValues.delete(form.dataset.keepValues);
    }
  });
  document.addEventListener("htmx:load", function (event) {
    openDetails.forEach(function (id) {
      const details = document.getElementById(id);
      if (details && !details.open && event.target.contains(details)) details.open = true;
    });
    event.target.querySelectorAll("form[data-keep-values]").forEach(function (form) {
      const values = keptValues.get(form.dataset.keepValues);
      if (values) restore(form, values);
    });
  });
})();
