// "Swap in": the swap API takes JSON (htmx's json-enc extension is not vendored), so post
// it with fetch and the session's CSRF token, then go to the dashboard's swap panel.
document.addEventListener("submit", async function (event) {
  const form = event.target.closest("form.swap-form");
  if (!form) return;
  event.preventDefault();
  const error = form.querySelector(".swap-error");
  error.textContent = "";
  const response = await fetch(form.action, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": form.csrfmiddlewaretoken.value },
    body: JSON.stringify({ model: form.dataset.model, host: form.elements.host.value }),
  });
  if (response.ok) { window.location.href = "/"; return; }
  const body = await response.json().catch(function () { return {}; });
  error.textContent = (body.error && body.error.message) || "swap refused (HTTP " + response.status + ")";
});
