// The generate form's own helpers: width and height that follow the chosen model, the LoRA
// picker, and sliders that show their value. Posting the form and watching its job is
// generate.js's; the input image is input_image.js's.
(() => {
  "use strict";
  const form = document.getElementById("generate-form");

  // A model opens at its own native size: when the model changes, a width and height still at
  // the old model's native size follow the new one's (GET /api/v1/models says each one's).
  const modelSelect = document.getElementById("id_model");
  const sizes = ["id_width", "id_height"].map((id) => document.getElementById(id));
  let nativeSizes = null;
  let previousModel = modelSelect.value;
  modelSelect.addEventListener("change", async () => {
    const [from, to] = [previousModel, modelSelect.value];
    previousModel = to;
    if (nativeSizes === null) {
      try {
        const response = await fetch("/api/v1/models", { headers: { Accept: "application/json" } });
        if (!response.ok) return;
        nativeSizes = Object.fromEntries((await response.json()).map((m) => [m.name, m.native_size]));
      } catch (error) {
        return;  // the sizes stay as they are; the server checks them
      }
    }
    const before = nativeSizes[from];
    const after = nativeSizes[to];
    // With an input image the size follows the picture, not the model (input_image.js).
    if (!after || modelSelect.value !== to || window.StudioInput?.editor.loaded) return;
    for (const input of sizes) {
      if (input && (input.value === "" || Number(input.value) === before)) input.value = after;
    }
  });

  // The LoRA picker adds `name:weight` to the loras field, replacing that LoRA's weight if it
  // is there already; the field stays editable text.
  const loraAdd = document.getElementById("lora-add");
  if (loraAdd) {
    loraAdd.addEventListener("click", () => {
      const field = document.getElementById("id_loras");
      const name = document.getElementById("lora-pick").value;
      const weight = document.getElementById("lora-weight").value || "1";
      const nameOf = (entry) => {
        const colon = entry.lastIndexOf(":");
        return (colon < 0 ? entry : entry.slice(0, colon)).trim();
      };
      const entries = field.value.split(",").map((s) => s.trim()).filter(Boolean)
        .filter((entry) => nameOf(entry) !== name);
      entries.push(`${name}:${weight}`);
      field.value = entries.join(", ");
    });
  }

  // A slider shows its value beside it.
  form.querySelectorAll("input[type=range]").forEach((slider) => {
    const shown = document.getElementById(`${slider.id}_value`);
    if (!shown) return;
    const show = () => { shown.textContent = Number(slider.value).toFixed(2); };
    slider.addEventListener("input", show);
    show();
  });
})();
