// The /learn/ page. The charts are drawn by the server; this adds a readout under them for
// touch screens, asks a worker for the forward process's frames (POST /learn/forward/, then
// GET until they are done) and shows them on a slider, runs the picture grids as ordinary
// jobs (POST /jobs/, as the generate page does, each followed over /ws/jobs/<id>/:
// docs/architecture.md §5), and steps through an image's stored denoising frames. Text from
// the server is always set with textContent.
(() => {
  "use strict";
  const FINISHED = new Set(["succeeded", "failed", "canceled"]);

  // The model picker shows the chosen model's schedule at once.
  const modelForm = document.getElementById("model-form");
  modelForm.elements.model.addEventListener("change", () => modelForm.submit());
  const pathForm = document.getElementById("path-form");
  pathForm?.elements.image.addEventListener("change", () => pathForm.submit());

  // --- The schedule's readout: the hovered (or tapped) band's values, as its <title> says.
  const readout = document.getElementById("schedule-readout");
  document.querySelectorAll(".learn-chart svg").forEach((svg) => {
    const show = (event) => {
      const band = event.target.closest("rect.band");
      if (!band || !readout) return;
      readout.textContent = band.dataset.readout;
      svg.querySelectorAll("rect.band.on").forEach((other) => other.classList.remove("on"));
      band.classList.add("on");
    };
    svg.addEventListener("pointermove", show);
    svg.addEventListener("pointerdown", show);
  });

  // --- The forward process: one computation at a time, its frames on the slider.
  const forwardPanel = document.getElementById("forward");
  if (forwardPanel) forwardProcess(forwardPanel);

  function forwardProcess(panel) {
    const form = panel.querySelector("#forward-form");
    const upload = form.elements.image;
    const slider = panel.querySelector("#forward-slider");
    const frame = panel.querySelector("#forward-frame");
    const caption = panel.querySelector("#forward-caption");
    const status = panel.querySelector("#forward-status");
    const error = panel.querySelector("#forward-error");
    const strip = [...panel.querySelectorAll("#forward-strip li")];
    let frames = [];
    let steps = 0;
    let ticket = 0;  // the latest request's: an older one's answers are dropped

    const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

    // POST the form (with the upload when one is chosen); on 429 wait and ask again.
    async function start() {
      const mine = ++ticket;
      error.textContent = "";
      status.textContent = "Sending it to the queue…";
      panel.classList.add("stale");  // the frames shown are another request's
      const data = new FormData(form);
      if (!upload.files.length) data.delete("image");
      for (let tries = 0; tries < 200 && mine === ticket; tries += 1) {
        const answer = await ask(form.action, { method: "POST", body: data });
        if (mine !== ticket || !answer) return;
        if (answer.status === 429) {
          status.textContent = answer.message;
          await sleep(answer.retryAfter * 1000);
          continue;
        }
        if (answer.errors) {
          status.textContent = "";
          error.textContent = answer.message;
          return;
        }
        if (upload.files.length) keepUpload(answer.body.source);
        await follow(mine, answer.body);
        return;
      }
    }

    // Read the computation's state each second until it ends (or a newer request starts).
    async function follow(mine, state) {
      while (mine === ticket) {
        show(state);
        if (!["queued", "running"].includes(state.status)) return;
        await sleep(state.status === "queued" && state.waiting > 30 ? 5000 : 1000);
        const query = new URLSearchParams({ model: form.elements.model.value,
          source: state.source, seed: String(state.seed) });
        const answer = await ask(`${form.action}?${query}`, {});
        if (mine !== ticket || !answer) return;
        if (answer.errors || answer.body.status === "none") {
          start();  // expired, or its picture is gone: ask again, which says why
          return;
        }
        state = answer.body;
      }
    }

    async function ask(url, options) {
      let response;
      try {
        response = await fetch(url, { ...options, headers: { Accept: "application/json" } });
      } catch {
        error.textContent = "Studio could not be reached. Check your connection and retry.";
        status.textContent = "";
        return null;
      }
      // A refusal made before the view (a body too large, say) may not be JSON.
      const body = await response.json()
        .catch(() => ({ errors: { __all__: `Studio answered ${response.status}.` } }));
      const message = Object.values(body.errors || {})[0] || `Studio answered ${response.status}.`;
      return { status: response.status, body, errors: body.errors, message,
        retryAfter: Number(response.headers.get("Retry-After")) || 3 };
    }

    // An upload becomes a choice of the picker, so a new seed reuses it without sending it.
    function keepUpload(source) {
      const picker = form.elements.source;
      let option = [...picker.options].find((o) => o.value === source);
      if (!option) {
        option = new Option(`Your upload: ${upload.files[0].name}`, source);
        picker.prepend(option);
      }
      picker.value = source;
      upload.value = "";
    }

    function show(state) {
      if (state.status === "queued") {
        const hint = state.waiting >= 20 ? " Every worker is busy, or none is running." : "";
        status.textContent = `Waiting in the queue for a worker (${state.waiting} s).${hint}`;
      } else if (state.status === "running") {
        status.textContent = state.total
          ? `A worker is decoding x_t: ${state.done} of ${state.total} frames.`
          : "A worker is encoding the picture…";
      } else if (state.status === "done") {
        status.textContent = `Computed at ${state.size}×${state.size} in ${state.seconds} s.`;
        frames = state.frames;
        steps = state.steps;
        panel.classList.remove("stale");
        slider.max = String(frames.length - 1);
        slider.value = String(Math.min(Number(slider.value), frames.length - 1));
        slider.disabled = false;
        state.strip.forEach((index, k) => {
          const item = strip[k];
          if (!item) return;
          item.dataset.frame = String(index);
          const img = item.querySelector("img");
          img.src = frames[index].image;
          img.hidden = false;
          item.querySelector("span").textContent = `t = ${frames[index].t}`;
        });
        showFrame();
      } else if (state.status === "failed") {
        status.textContent = "";
        error.textContent = `It failed: ${state.error}`;
      } else {
        status.textContent = "A newer request replaced this one.";
      }
    }

    function showFrame() {
      const chosen = frames[Number(slider.value)];
      if (!chosen) return;
      const a = chosen.alpha_bar;
      const share = (value) => `${(100 * value).toFixed(value < 0.1 ? 1 : 0)}%`;
      const shown = a < 0.001 ? a.toExponential(1) : a.toPrecision(3);
      frame.src = chosen.image;
      frame.alt = `x_t at t = ${chosen.t}`;
      frame.hidden = false;
      frame.nextElementSibling.hidden = true;
      caption.textContent = `t = ${chosen.t} of ${steps} · ᾱ_t = ${shown} · `
        + `signal ${share(a)}, noise ${share(1 - a)}`;
    }

    slider.addEventListener("input", showFrame);
    strip.forEach((item) => item.addEventListener("click", () => {
      if (item.dataset.frame === undefined) return;
      slider.value = item.dataset.frame;
      showFrame();
    }));
    form.addEventListener("submit", (event) => { event.preventDefault(); start(); });
    form.elements.source.addEventListener("change", start);
    form.elements.seed.addEventListener("change", start);
    upload.addEventListener("change", () => { if (upload.files.length) start(); });
    start();
  }

  // --- The picture grids: one job per cell, at most as many waiting as the queue allows.
  document.querySelectorAll(".learn-run").forEach((panel) => {
    const form = panel.querySelector("form");
    const error = panel.querySelector(".learn-error");
    const button = form.querySelector("button[type=submit]");
    const maxQueued = Number(panel.dataset.maxQueued) || 1;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      button.disabled = true;
      try {
        await runGrid(form, [...panel.querySelectorAll(".learn-cell")], maxQueued, error);
      } finally {
        button.disabled = false;
      }
    });
  });

  async function runGrid(form, cells, maxQueued, error) {
    const runs = cells.map((cell) => ({ cell, status: "waiting", changed: null }));
    runs.forEach((run) => {
      run.cell.run = run;  // an earlier run's socket no longer draws in this cell
      delete run.cell.dataset.done;
      run.cell.querySelector(".learn-frame img").hidden = true;
      setCell(run, "waiting to be sent", null);
    });
    for (const run of runs) {
      // Submit in turns: no more of ours waiting than the per-user limit lets wait.
      while (runs.filter((r) => r.status === "queued").length >= maxQueued) {
        await nextChange(runs, 5000);
      }
      if (!(await submit(form, run, runs, error))) {
        runs.filter((r) => r.status === "waiting").forEach((r) => setCell(r, "not sent", null));
        return;
      }
    }
  }

  // POST one cell's job; on 429 (too many waiting) wait for one of ours to start and retry.
  async function submit(form, run, runs, error) {
    for (let tries = 0; tries < 120; tries += 1) {
      const data = new FormData(form);
      for (const [key, value] of Object.entries(JSON.parse(run.cell.dataset.params))) {
        data.set(key, String(value));
      }
      let response;
      let body;
      try {
        response = await fetch("/jobs/", {
          method: "POST", body: data, headers: { Accept: "application/json" },
        });
        body = await response.json();
      } catch {
        error.textContent = "Studio could not be reached. Check your connection and retry.";
        return false;
      }
      if (response.ok) {
        follow(run, body.job);
        return true;
      }
      const message = Object.values(body.errors || {})[0] || `Studio answered ${response.status}.`;
      if (response.status !== 429) {
        error.textContent = message;
        return false;
      }
      setCell(run, "waiting for a place in the queue", null);
      const seconds = Number(response.headers.get("Retry-After")) || 5;
      await nextChange(runs, seconds * 1000);
    }
    return false;
  }

  // Resolves when any run's state changes, or after `ms`.
  function nextChange(runs, ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      runs.forEach((run) => {
        run.changed = () => { clearTimeout(timer); resolve(); };
      });
    });
  }

  function changed(run) {
    const notify = run.changed;
    run.changed = null;
    notify?.();
  }

  function follow(run, job, attempt = 0) {
    run.job = job.id;
    render(run, job);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/jobs/${job.id}/`);
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "state") render(run, message.job);
      else if (message.type === "progress") progress(run, message);
      else if (message.type === "queue" && run.status === "queued") {
        setCell(run, queuedText(message.queue_position), null);
      }
      if (FINISHED.has(run.status)) socket.close();
    };
    socket.onclose = () => {
      if (!FINISHED.has(run.status) && attempt < 20) {
        setTimeout(() => follow(run, { id: job.id, status: run.status, images: [] }, attempt + 1),
          Math.min(500 * 2 ** attempt, 5000));
      }
    };
  }

  function queuedText(position) {
    if (position === null || position === undefined) return "queued";
    return position === 0 ? "queued, next up" : `queued, ${position} ahead`;
  }

  function progress(run, message) {
    if (FINISHED.has(run.status) || message.step < (run.step || 0)) return;
    run.step = message.step;
    if (run.status !== "running") {
      run.status = "running";
      changed(run);
    }
    setCell(run, `step ${message.step} of ${message.total}`, message.preview || null);
  }

  function render(run, job) {
    const before = run.status;
    run.status = job.status;
    if (job.status === "queued") {
      setCell(run, queuedText(job.queue_position), null);
    } else if (job.status === "running") {
      setCell(run, job.loading_model ? "loading the model…" : `step ${job.step} of ${job.total}`, null);
    } else if (job.status === "succeeded") {
      const image = job.images[0];
      setCell(run, seconds(job.timings), image ? image.url : null, image ? image.page_url : null);
      if (run.cell.run === run) run.cell.dataset.done = "true";
    } else if (job.status === "failed") {
      setCell(run, `failed: ${job.error}`, null);
    } else if (job.status === "canceled") {
      setCell(run, "canceled", null);
    }
    if (before !== run.status) changed(run);
  }

  // The run's own time: sampling and decoding, without waiting for the model to load.
  function seconds(timings) {
    if (!timings || typeof timings.total !== "number") return "done";
    const run = timings.total - (timings.load || 0);
    return `${run.toFixed(2)} s`;
  }

  function setCell(run, text, src, href = null) {
    if (run.cell.run !== run) return;
    const frame = run.cell.querySelector(".learn-frame");
    const img = frame.querySelector("img");
    frame.querySelector("span").hidden = Boolean(src) || !img.hidden;
    if (src) {
      img.src = src;
      img.hidden = false;
    }
    run.cell.querySelector(".cell-status").textContent = text;
    if (href) {
      const link = Object.assign(document.createElement("a"), { href, textContent: "open" });
      run.cell.querySelector(".cell-status").append(" · ", link);
    }
  }

  // --- The denoising path: the slider picks one stored frame.
  const framesData = document.getElementById("path-frames");
  if (framesData) {
    const frames = JSON.parse(framesData.textContent);
    const slider = document.getElementById("path-slider");
    const frame = document.getElementById("path-frame");
    const caption = document.getElementById("path-caption");
    const total = caption.textContent.split(" of ").pop();
    slider.addEventListener("input", () => {
      const chosen = frames[Number(slider.value)];
      frame.src = chosen.image;
      frame.alt = `Predicted x₀ at step ${chosen.step}`;
      caption.textContent = `Predicted x₀ after step ${chosen.step} of ${total}`;
    });
  }
})();
