// The admin screens (templates/dashboard/keys.html, webhooks.html): forms posted as JSON to
// the API with the session's CSRF token (as dashboard.js does); a created key's or
// endpoint's secret is shown once, then the list is fetched again.
(function () {
  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]; }
    catch (e) { return ""; }
  }

  async function send(method, url, body) {
    const init = { method: method, headers: { "X-CSRFToken": csrfToken() } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try { response = await fetch(url, init); }
    catch (e) { return { error: "failed: no response" }; }
    if (response.ok) {
      return { data: response.status === 204 ? null : await response.json().catch(function () { return null; }) };
    }
    let message = "failed: HTTP " + response.status;
    try {
      const answer = await response.json();
      // Arbiter's one error shape; django-ninja's own refusals (validation, CSRF) use "detail".
      if (answer.error && answer.error.message) message = answer.error.message;
      else if (Array.isArray(answer.detail)) message = answer.detail.map(function (d) { return (d.loc || []).slice(-1) + ": " + d.msg; }).join("; ");
      else if (answer.detail) message = String(answer.detail);
    } catch (e) { /* keep it */ }
    return { error: message };
  }

  // The one JSON client of the admin screens; webhooks.js uses it too.
  window.ArbiterApi = { send: send };

  function reloadList(form) {
    htmx.ajax("GET", form.dataset.listUrl, { target: form.dataset.list, swap: "outerHTML" });
  }

  function splitList(text) {
    return text.split(",").map(function (part) { return part.trim(); }).filter(Boolean);
  }

  function keyBody(form) {
    const days = form.elements.expires_in_days.value.trim();
    const rpm = form.elements.requests_per_minute.value.trim();
    const tpd = form.elements.tokens_per_day.value.trim();
    return {
      name: form.elements.name.value,
      role: form.elements.role.value,
      models: splitList(form.elements.models.value),
      expires_in_days: days ? Number(days) : null,
      requests_per_minute: rpm ? Number(rpm) : null,
      tokens_per_day: tpd ? Number(tpd) : null,
    };
  }

  function webhookBody(form) {
    // The API forbids unknown and null-where-not-allowed fields: send only what was given.
    const body = { url: form.elements.url.value.trim(), description: form.elements.description.value };
    body.events = Array.from(form.querySelectorAll("input[name=events]:checked")).map(function (box) { return box.value; });
    const secret = form.elements.secret.value.trim();
    if (secret) body.secret = secret;
    return body;
  }

  function showOnce(boxId, valueId, labelSelector, label, secret) {
    const box = document.getElementById(boxId);
    box.querySelector(labelSelector).textContent = label;
    document.getElementById(valueId).textContent = secret;
    box.hidden = false;
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (form.id !== "key-form" && form.id !== "webhook-form") return;
    event.preventDefault();
    const output = form.querySelector("output.action-error");
    const button = form.querySelector("button[type=submit]");
    output.textContent = "";
    button.disabled = true;
    const isKey = form.id === "key-form";
    const result = await send("POST", form.dataset.url, isKey ? keyBody(form) : webhookBody(form));
    button.disabled = false;
    if (result.error) { output.textContent = result.error; return; }
    if (isKey) showOnce("new-key", "new-key-value", ".new-key-name", result.data.name, result.data.key);
    else showOnce("new-webhook-secret", "new-webhook-secret-value", ".new-webhook-url", result.data.url, result.data.secret);
    form.reset();
    reloadList(form);
  });

  // Revoke (keys table): DELETE /api/keys/{id}, then the table again.
  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button.key-revoke");
    if (!button) return;
    if (!window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    const result = await send("DELETE", button.dataset.url);
    if (result.error) {
      button.disabled = false;
      button.parentElement.querySelector("output.action-error").textContent = result.error;
      return;
    }
    reloadList(document.getElementById("key-form"));
  });
})();
