// Gallery pages: copy seed, the denoising scrubber, likes without a reload,
// confirmations, and waiting on reproductions. Every form also works without this script.
"use strict";

function csrfToken(form) {
  return form.querySelector("input[name=csrfmiddlewaretoken]").value;
}

document.querySelectorAll("[data-copy]").forEach((button) => {
  button.addEventListener("click", async () => {
    const text = document.querySelector(button.dataset.copy).textContent.trim();
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // Clipboard access needs a secure context; select the text so it can be copied by hand.
      window.getSelection().selectAllChildren(document.querySelector(button.dataset.copy));
    }
  });
});

// The scrubber: frames 0..n-1 are this image's kept previews (Output.trajectory), position n
// the final image.
const framesData = document.getElementById("trajectory");
const scrubber = document.getElementById("scrubber");
if (framesData && scrubber) {
  const frames = JSON.parse(framesData.textContent);
  const image = document.getElementById("image");
  const label = document.getElementById("scrubber-step");
  const finalSrc = image.src;
  scrubber.addEventListener("input", () => {
    const index = Number(scrubber.value);
    const frame = frames[index];
    image.src = frame ? frame.image : finalSrc;
    label.textContent = frame ? `step ${frame.step}` : "final image";
  });
}

document.querySelectorAll(".like-form").forEach((form) => {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch(form.action, {
      method: "POST",
      headers: {"X-CSRFToken": csrfToken(form), "Accept": "application/json"},
      credentials: "same-origin",
    });
    if (!response.ok) return;
    const state = await response.json();
    const button = form.querySelector("button");
    button.classList.toggle("liked", state.liked);
    button.setAttribute("aria-pressed", String(state.liked));
    form.querySelector(".like-count").textContent = state.like_count;
  });
});

document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});

// A reproduction still running: poll its state, and reload once it has a verdict or ended.
const FINISHED = ["succeeded", "failed", "canceled"];
document.querySelectorAll(".reproduction").forEach((box) => {
  if (box.dataset.verdict || FINISHED.includes(box.dataset.status)) return;
  const text = box.querySelector(".working");
  const poll = async () => {
    const response = await fetch(box.dataset.stateUrl, {credentials: "same-origin"});
    if (response.ok) {
      const state = await response.json();
      if (state.verdict || FINISHED.includes(state.status)) {
        window.location.reload();
        return;
      }
      if (text && state.status === "running") text.textContent = `Running: step ${state.step} of ${state.total}…`;
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
});
