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

// Disk buttons of hub models (templates/catalog/partials/model_disk.html). The fragment is
// swapped in by htmx after the page loads and after every change, so clicks are caught
// on the document. The log and the alert sit outside the fragment, in the model's card,
// so they outlive its reload.
function csrfToken() {
  const input = document.querySelector("[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

function diskParts(button) {
  const card = button.closest(".model-card");
  return { card: card, log: card.querySelector(".disk-progress"), alert: card.querySelector(".disk-error") };
}

// SSH errors already name their host ("sim-a: hf exited ..."): say it once.
function onHost(host, message) {
  return message.startsWith(host + ": ") ? message : host + ": " + message;
}

function reloadDisk(key) {
  const fragment = document.getElementById("disk-" + key);
  if (!fragment) return Promise.resolve();
  return htmx.ajax("GET", fragment.dataset.url, { target: fragment, swap: "outerHTML" });
}

async function errorMessage(response, what) {
  const body = await response.json().catch(function () { return {}; });
  // Arbiter's one error shape; django-ninja's own refusals (CSRF, auth) use "detail".
  return (body.error && body.error.message) || body.detail || what + " refused (HTTP " + response.status + ")";
}

// Server-Sent Events from a fetch body: `event:` / `data:` lines, a blank line ends one.
// (EventSource cannot POST or send the CSRF header.)
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = { type: "message", data: [] };
  for (;;) {
    const chunk = await reader.read();
    buffer += decoder.decode(chunk.value || new Uint8Array(), { stream: !chunk.done });
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = chunk.done ? "" : lines.pop();  // a line may continue in the next chunk
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) onEvent(event.type, JSON.parse(event.data.join("\n")));
        event = { type: "message", data: [] };
      } else if (line.startsWith("event:")) {
        event.type = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        event.data.push(line.slice(5).replace(/^ /, ""));
      }  // ":" comments and other fields are ignored, as EventSource does
    }
    if (chunk.done) return;
  }
}

async function download(button) {
  const parts = diskParts(button);
  const key = button.dataset.model;
  button.disabled = true;
  parts.alert.textContent = "";
  parts.log.hidden = false;
  // A fresh log per download, unless another host's download of this model still writes.
  const running = Number(parts.card.dataset.downloads || 0);
  if (!running) parts.log.textContent = "";
  parts.card.dataset.downloads = running + 1;
  function print(line) {
    parts.log.textContent += line + "\n";
    parts.log.scrollTop = parts.log.scrollHeight;
  }
  function fail(message) {
    parts.alert.textContent = onHost(button.dataset.host, message);
    button.disabled = false;
  }
  let finished = false;
  try {
    const response = await fetch(button.dataset.url, { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
    if (!response.ok) { fail(await errorMessage(response, "download")); return; }
    await readEvents(response, function (type, data) {
      if (type === "start") print("Downloading " + data.repo + " to " + data.host + "…");
      else if (type === "progress") print(data.line);
      else if (type === "error") { finished = true; fail(data.message); }
      else if (type === "done") { finished = true; reloadDisk(key); }
    });
  } catch (error) {
    finished = true;
    fail("download interrupted: " + error.message);
  } finally {
    parts.card.dataset.downloads = Number(parts.card.dataset.downloads) - 1;
  }
  if (!finished) fail("the download stream ended without a result");
}

async function deleteFromDisk(button) {
  const parts = diskParts(button);
  const key = button.dataset.model;
  if (!window.confirm("Delete " + key + " from " + button.dataset.host + "?")) return;
  button.disabled = true;
  parts.alert.textContent = "";
  try {
    const response = await fetch(button.dataset.url, { method: "DELETE", headers: { "X-CSRFToken": csrfToken() } });
    if (response.status === 204) { reloadDisk(key); return; }
    parts.alert.textContent = onHost(button.dataset.host, await errorMessage(response, "delete"));
  } catch (error) {
    parts.alert.textContent = button.dataset.host + ": delete failed: " + error.message;
  }
  button.disabled = false;
}

document.addEventListener("click", function (event) {
  const button = event.target.closest("button.disk-download, button.disk-delete");
  if (!button || button.disabled) return;
  if (button.classList.contains("disk-download")) download(button);
  else deleteFromDisk(button);
});
