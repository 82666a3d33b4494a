// The webhook panel's Edit form and Send test button (templates/dashboard/partials/
// webhook_panel.html, admins only): PATCH /api/webhooks/{id} and POST /api/webhooks/{id}/test
// as JSON with the session's CSRF token, through admin.js's `send` (as Add does). The panel is pushed
// again after every delivery attempt (a test send is one), so what the person typed and
// the last test's answer are kept here and put back into each new render.
(function () {
  const send = window.ArbiterApi.send;  // static/js/admin.js, loaded before this file

  function formState(form) {
    return {
      url: form.elements.url.value.trim(),
      description: form.elements.description.value,
      events: Array.from(form.querySelectorAll("input[name=events]:checked")).map(function (box) { return box.value; }),
      enabled: form.elements.enabled.checked,
    };
  }

  function restoreForm(form, state) {
    form.elements.url.value = state.url;
    form.elements.description.value = state.description;
    form.querySelectorAll("input[name=events]").forEach(function (box) { box.checked = state.events.indexOf(box.value) >= 0; });
    form.elements.enabled.checked = state.enabled;
  }

  function describe(result) {
    // e.g. "202 in 14 ms: thanks" or "not sent: 10.0.0.5 is a private address …"
    let text = result.ok ? "✓ " : "✗ ";
    text += result.status_code !== null ? "HTTP " + result.status_code : "no answer";
    text += " in " + Math.round(result.duration_ms) + " ms";
    if (result.error) text += " · " + result.error;
    if (result.response_excerpt) text += " · " + result.response_excerpt;
    return text;
  }

  function showResult(output, result) {
    output.textContent = result.text;
    output.classList.toggle("error", !result.ok);
    output.dataset.ok = result.ok ? "true" : "false";
  }

  function refreshPanel() {
    const panel = document.getElementById("webhook-panel");
    if (panel) htmx.ajax("GET", panel.getAttribute("hx-get"), { target: "#webhook-panel", swap: "outerHTML" });
  }

  const drafts = new Map();   // endpoint id -> the edit form's unsaved state
  const results = new Map();  // endpoint id -> {ok, text} of the last test send

  document.addEventListener("input", function (event) {
    const form = event.target.form;
    if (form && form.classList.contains("webhook-edit-form")) drafts.set(form.dataset.endpoint, formState(form));
  });

  document.addEventListener("htmx:load", function (event) {
    event.target.querySelectorAll("form.webhook-edit-form").forEach(function (form) {
      const draft = drafts.get(form.dataset.endpoint);
      if (draft) restoreForm(form, draft);
    });
    results.forEach(function (result, id) {
      const output = document.getElementById("webhook-" + id + "-test-result");
      if (output && event.target.contains(output)) showResult(output, result);
    });
  });

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!form.classList.contains("webhook-edit-form")) return;
    event.preventDefault();
    const output = form.querySelector("output.action-error");
    const button = form.querySelector("button[type=submit]");
    output.textContent = "";
    button.disabled = true;
    const answer = await send("PATCH", form.dataset.url, formState(form));
    button.disabled = false;
    if (answer.error) { output.textContent = answer.error; return; }
    drafts.delete(form.dataset.endpoint);
    refreshPanel();
  });

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button.webhook-test");
    if (!button) return;
    const id = button.dataset.endpoint;
    const output = document.getElementById("webhook-" + id + "-test-result");
    button.disabled = true;
    output.textContent = "sending…";
    output.dataset.ok = "";
    const answer = await send("POST", button.dataset.testUrl);
    button.disabled = false;
    const result = answer.error ? { ok: false, text: "✗ " + answer.error } : { ok: answer.data.ok, text: describe(answer.data) };
    results.set(id, result);
    // The push that logs the test may already have replaced the button's panel.
    showResult(document.getElementById("webhook-" + id + "-test-result") || output, result);
    // The webhooks page has no socket: fetch the panel for the logged test delivery.
    refreshPanel();
  });
})();
