// The generate page: submit without reloading, then watch the job over its websocket
// (docs/architecture.md §5): a state message on connect, a progress message per step, a final state.
// Every unfinished job in "Recent jobs" is watched the same way, so its row never goes stale,
// and each has a cancel button there; after a reload the preview picks up the running job.
// Text from the server is always set with textContent, never parsed as HTML.
// The form's own helpers live in generate_form.js; the input image and its mask in
// input_image.js and mask_editor.js, which this file asks for them as it posts.
(() => {
  "use strict";
  const form = document.getElementById("generate-form");
  const seedInput = document.getElementById("id_seed");
  const randomSeed = document.getElementById("random-seed");
  const preview = document.getElementById("preview");
  const previewEmpty = document.getElementById("preview-empty");
  const bar = document.getElementById("progress-bar");
  const statusText = document.getElementById("status-text");
  const eta = document.getElementById("eta");
  const cancelButton = document.getElementById("cancel-button");
  const results = document.getElementById("results");
  const live = document.querySelector(".live");
  const recent = document.querySelector("#recent-jobs tbody");
  let lastSeed = JSON.parse(document.getElementById("last-seed").textContent);
  const FINISHED = new Set(["succeeded", "failed", "canceled"]);
  // A socket for every unfinished job on the page: the job last submitted (`current`) drives
  // the preview, and every one keeps its row in "Recent jobs" up to date.
  const sockets = new Map();
  let current = null;
  let previewsDrawn = 0;

  const syncSeed = () => {
    seedInput.disabled = randomSeed.checked;
    if (randomSeed.checked) seedInput.value = "";
  };
  randomSeed.addEventListener("change", syncSeed);
  syncSeed();
  document.getElementById("reuse-seed").addEventListener("click", () => {
    if (lastSeed === null) return;
    randomSeed.checked = false;
    syncSeed();
    seedInput.value = lastSeed;
  });

  function clearErrors() {
    form.querySelectorAll("[data-error-for]").forEach((el) => { el.textContent = ""; });
    form.querySelectorAll(".field.has-error").forEach((el) => el.classList.remove("has-error"));
    document.getElementById("form-error").textContent = "";
  }

  function showErrors(errors) {
    for (const [field, message] of Object.entries(errors)) {
      // "loras.0.weight" belongs to the loras field.
      const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`)
        || form.querySelector(`[data-error-for="${CSS.escape(field.split(".")[0])}"]`);
      if (slot) {
        slot.textContent = message;
        slot.closest(".field").classList.add("has-error");
        // A field inside a closed section (Variation seed, Hires fix) opens it to be seen.
        const section = slot.closest("details");
        if (section) section.open = true;
      } else {
        document.getElementById("form-error").textContent = message;
      }
    }
    // On a phone the button is far below the prompt: take the person to the first field
    // that needs fixing (the form's order, not the server's), or to the form's own error.
    const failed = form.querySelector(".field.has-error");
    const first = failed?.querySelector("input:not(.sr-only), select, textarea, button");
    if (first) first.focus();
    else bringIntoView(failed || document.getElementById("form-error"));
  }

  // Scroll to `element` unless it is already in sight, without motion for those who asked
  // for none. The sticky top bar is allowed for by `scroll-margin-top` in the stylesheet.
  function bringIntoView(element) {
    const box = element.getBoundingClientRect();
    const topBar = document.querySelector(".topbar")?.getBoundingClientRect().bottom || 0;
    if (box.top >= topBar && box.bottom <= window.innerHeight) return;
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    element.scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const button = document.getElementById("generate-button");
    button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST", body: formData(), headers: { Accept: "application/json" },
      });
      const body = await answer(response);
      if (!response.ok) {
        showErrors(body.errors || { __all__: body.error || "Something went wrong." });
        return;
      }
      watch(body.job);
      // On narrow screens the preview sits above the form, out of sight of the button.
      bringIntoView(live);
    } catch (err) {
      showErrors({ __all__: "Studio could not be reached. Check your connection and retry." });
    } finally {
      button.disabled = false;
    }
  });

  // The form's fields, the input image and mask as data URLs (input_image.js), and every
  // yes/no field as true or false: an unticked box would send nothing, meaning its default.
  function formData() {
    const data = new FormData(form);
    window.StudioInput?.fill(data);
    form.querySelectorAll("input[data-bool]").forEach((box) => {
      if (!box.disabled) data.set(box.name, box.checked ? "true" : "false");
    });
    return data;
  }

  // The JSON body, or an error in the same shape when a proxy or the body limit answered.
  async function answer(response) {
    try {
      return await response.json();
    } catch {
      const message = response.status === 413
        ? "That is too much to send at once: use a smaller input image."
        : `Studio answered ${response.status}; please retry.`;
      return { errors: { __all__: message } };
    }
  }

  cancelButton.addEventListener("click", () => {
    const socket = current && sockets.get(current.id);
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "cancel" }));
      cancelButton.disabled = true;
      statusText.textContent = "Canceling…";
    }
  });

  function watch(job) {
    show(job.id);
    lastSeed = job.seed;
    addRecent(job);
    render(job);
    follow(job.id);
  }

  // Point the live panel at a job; its next state or progress message draws it.
  function show(jobId) {
    current = { id: jobId, startedAt: null };
    previewsDrawn = 0;
    results.replaceChildren();
    preview.hidden = true;
    previewEmpty.hidden = false;
    bar.style.width = "0%";
    statusText.textContent = "Connecting…";
    eta.textContent = "";
    cancelButton.hidden = false;
    cancelButton.disabled = false;
  }

  function follow(jobId, attempt = 0) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/jobs/${jobId}/`);
    sockets.set(jobId, socket);
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "state") {
        render(message.job);
      } else if (message.type === "progress") {
        setStatus(jobId, "running");
        progress(message);
      } else if (message.type === "queue") {
        queued(message);
      }
    };
    socket.onclose = () => {
      if (sockets.get(jobId) !== socket) return;
      sockets.delete(jobId);
      // Reconnect while the job's row says it is unfinished: the server resends the state.
      if (!FINISHED.has(rowOf(jobId)?.dataset.status) && attempt < 20) {
        setTimeout(() => follow(jobId, attempt + 1), Math.min(500 * 2 ** attempt, 5000));
      }
    };
  }

  function progress(message) {
    if (!current || message.job !== current.id || current.finished) return;
    // The latest step sent on connect can cross a live one still in flight: never go back,
    // except to a new attempt (a job the reaper requeued starts again from step 1).
    const attempt = message.attempt || 0;
    if (attempt < (current.attempt || 0)) return;
    if (attempt === current.attempt && message.step < current.step) return;
    current.attempt = attempt;
    current.step = message.step;
    current.status = "running";
    if (message.preview) {
      preview.src = message.preview;
      preview.hidden = false;
      previewEmpty.hidden = true;
      previewsDrawn += 1;
      preview.dataset.drawn = String(previewsDrawn);
    }
    const fraction = message.step / message.total;
    bar.style.width = `${(100 * fraction).toFixed(1)}%`;
    statusText.textContent = `Step ${message.step} of ${message.total}`;
    if (message.step > 0 && message.step < message.total) {
      const remaining = (message.elapsed / message.step) * (message.total - message.step);
      eta.textContent = `about ${remaining < 1 ? "<1" : Math.round(remaining)} s left`;
    } else {
      eta.textContent = "";
    }
  }

  // A job may wait for more than its turn: no worker up, or none with its model. The
  // server says so in `waiting`; queue-position messages keep the last reason heard.
  function queuedText(position) {
    const turn = position === 0 ? "Queued — next up" : `Queued — ${position} ahead of you`;
    return current && current.waiting ? `${turn} (waiting: ${current.waiting})` : turn;
  }

  // The server tells every waiting job its new place whenever the queue's order changes.
  // Only a job still shown as waiting takes it: one that started has moved on.
  function queued(message) {
    if (!current || message.job !== current.id || current.status !== "queued") return;
    statusText.textContent = queuedText(message.queue_position);
  }

  function render(job) {
    updateRecent(job);
    if (FINISHED.has(job.status)) sockets.get(job.id)?.close();
    if (!current || job.id !== current.id) return;
    if (job.attempt !== current.attempt) {
      current.attempt = job.attempt;  // a requeued job starts again: its steps count afresh
      current.step = 0;
    }
    current.status = job.status;
    current.waiting = job.waiting || null;
    if (job.status === "queued") {
      statusText.textContent = queuedText(job.queue_position);
    } else if (job.status === "running") {
      // A worker loading the job's model says so first: a real model takes seconds.
      // Every few seconds while it loads, the worker says for how long it has.
      const seconds = job.loading_seconds ? ` ${job.loading_seconds} s` : "";
      statusText.textContent = job.loading_model
        ? `Loading the model “${job.loading_model}”…${seconds}` : `Step ${job.step} of ${job.total}`;
    } else {
      current.finished = true;
      cancelButton.hidden = true;
      eta.textContent = "";
      if (job.status === "succeeded") {
        bar.style.width = "100%";
        statusText.textContent = `Done — seed ${job.seed}`;
        showResults(job.images);
      } else if (job.status === "failed") {
        statusText.textContent = `Failed: ${job.error}`;
      } else {
        statusText.textContent = "Canceled";
      }
    }
  }

  function showResults(images) {
    results.replaceChildren(...images.map((image) => {
      const box = document.createElement("div");
      box.className = "result";
      const link = document.createElement("a");
      link.href = image.page_url || image.url;
      const img = document.createElement("img");
      img.src = image.url;
      img.alt = `Result ${image.index + 1}, seed ${image.seed}`;
      const caption = document.createElement("span");
      caption.textContent = `seed ${image.seed}`;
      link.append(img, caption);
      const use = Object.assign(document.createElement("a"), {
        href: `/generate/?input_image=${encodeURIComponent(image.id)}`,
        className: "button small secondary use-input", textContent: "Use as input",
      });
      use.dataset.useInput = image.id;
      box.append(link, use);
      return box;
    }));
    if (images.length) {
      preview.src = images[0].url;
      preview.hidden = false;
      previewEmpty.hidden = true;
    }
  }

  // "Use as input" on a result: straight into the input area, keeping the form as it is.
  results.addEventListener("click", async (event) => {
    const use = event.target.closest("a[data-use-input]");
    if (!use || !window.StudioInput) return;
    event.preventDefault();
    await window.StudioInput.useImage(use.dataset.useInput);
    window.StudioInput.show();
  });

  // Cancel from a row of "Recent jobs": a queued job ends at once, a running one within a
  // step. The answer is the job's state, drawn like a socket's.
  recent.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-cancel]");
    if (!button) return;
    button.disabled = true;
    try {
      const token = form.elements.csrfmiddlewaretoken.value;
      const response = await fetch(`/jobs/${button.dataset.cancel}/cancel/`, {
        method: "POST", headers: { Accept: "application/json", "X-CSRFToken": token },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render((await response.json()).job);
    } catch (err) {
      button.disabled = false;
      button.title = "Could not cancel: retry.";
    }
  });

  // Jobs that were unfinished when the page was drawn are followed like new ones, and the
  // live panel shows the one running (else the newest waiting), as before the reload.
  const unfinished = [...recent.querySelectorAll("tr[data-job]")]
    .filter((row) => !FINISHED.has(row.dataset.status));
  const resumed = unfinished.find((row) => row.dataset.status === "running") || unfinished[0];
  if (resumed) show(resumed.dataset.job);
  unfinished.forEach((row) => follow(row.dataset.job));

  function addRecent(job) {
    recent.querySelector("tr.empty")?.remove();
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    const cells = [job.prompt, "", "just now", ""].map((text) => {
      const td = document.createElement("td");
      td.textContent = text;
      return td;
    });
    cells[0].className = "prompt-cell";
    cells[1].className = "status-cell";
    const cancel = Object.assign(document.createElement("button"), {
      type: "button", className: "button small danger", textContent: "Cancel",
    });
    cancel.dataset.cancel = job.id;
    cells[1].append(cancel);
    row.append(...cells);
    recent.prepend(row);
  }

  function rowOf(jobId) {
    return recent.querySelector(`tr[data-job="${CSS.escape(jobId)}"]`);
  }

  function setStatus(jobId, status) {
    const row = rowOf(jobId);
    if (!row || row.dataset.status === status) return;
    row.dataset.status = status;
    const badge = document.createElement("span");
    badge.className = `badge ${status}`;
    badge.textContent = status[0].toUpperCase() + status.slice(1);
    const cell = row.children[1];
    const old = cell.querySelector(".badge");
    if (old) old.replaceWith(badge);
    else cell.prepend(badge);
    if (FINISHED.has(status)) cell.querySelector("button[data-cancel]")?.remove();
  }

  function updateRecent(job) {
    const row = rowOf(job.id);
    if (!row) return;
    setStatus(job.id, job.status);
    const images = row.children[3];
    images.replaceChildren(...job.images.map((image) => {
      const link = document.createElement("a");
      link.href = image.page_url || image.url;
      link.className = "thumb-link";
      const img = document.createElement("img");
      img.src = image.url;
      img.className = "mini";
      img.alt = `image ${image.index}`;
      link.append(img);
      return link;
    }));
    if (job.error) images.append(Object.assign(document.createElement("span"), {
      className: "muted", textContent: job.error,
    }));
  }
})();
