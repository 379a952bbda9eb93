// "Start from an image" on the generate page: choose, drop or paste a picture, or take one
// from the gallery (/generate/?input_image=<image id>, "Use as input"); paint a mask over it
// (mask_editor.js); extend its canvas for outpainting. generate.js calls StudioInput.fill
// when it posts the form: the input and the mask travel as data-URL fields named as the
// request names them (init_image, mask), and the server checks both.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const section = $("input-section");
  if (!section) return;
  const fileInput = $("id_init_image");
  const maskFile = $("id_mask");
  const editorBox = $("input-editor");
  const facts = $("input-facts");
  const options = $("input-options");
  const hires = $("hires-fields");
  const form = $("generate-form");
  const sizes = { width: $("id_width"), height: $("id_height") };
  const matchSize = $("match-size");
  const limits = { bytes: Number(section.dataset.maxBytes), pixels: Number(section.dataset.maxPixels) };
  // The formats the server reads as they are; anything else the browser shows goes as a PNG.
  const SENT_AS_IS = new Set(["image/png", "image/jpeg", "image/webp"]);
  const IMAGE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  let original = null;  // the chosen file as a data URL, when it can travel as it is
  let sizedByHand = false;  // the person set width or height since the picture came

  const editor = new window.MaskEditor({
    stage: $("mask-stage"), picture: $("input-picture"), overlay: $("input-mask"),
    onChange: changed,
  });

  function error(message) {
    const slot = section.querySelector('[data-error-for="init_image"]');
    slot.textContent = message;
    slot.closest(".field").classList.toggle("has-error", Boolean(message));
  }

  const megabytes = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MB`;

  function readAsDataURL(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  // 1. Refuse what is plainly too large before decoding it (the server checks again).
  // 2. Decode it as the browser shows it; that size is the size the mask is painted at.
  // 3. Show the editor, with width and height following the picture.
  async function load(blob) {
    error("");
    if (!blob.type.startsWith("image/")) {
      error("That file is not an image: choose a PNG, JPEG or WebP picture.");
      return;
    }
    if (limits.bytes && blob.size > limits.bytes) {
      error(`That image is ${megabytes(blob.size)}; the most Studio takes is ${megabytes(limits.bytes)}.`);
      return;
    }
    const url = URL.createObjectURL(blob);
    const image = new Image();
    image.src = url;
    try {
      await image.decode();
    } catch {
      error("That file could not be read as an image: choose a PNG, JPEG or WebP picture.");
      return;
    } finally {
      URL.revokeObjectURL(url);
    }
    const pixels = image.naturalWidth * image.naturalHeight;
    if (limits.pixels && pixels > limits.pixels) {
      error(`That image is ${image.naturalWidth}×${image.naturalHeight} pixels; the most is ${limits.pixels.toLocaleString()} pixels.`);
      return;
    }
    original = SENT_AS_IS.has(blob.type) ? await readAsDataURL(blob) : null;
    sizedByHand = false;
    resetPadding();
    editor.load(image);
    editorBox.hidden = false;
    section.classList.add("has-input");
    $("brush-size").max = String(Math.max(16, Math.round(Math.max(image.naturalWidth, image.naturalHeight) / 3)));
    $("brush-size").value = String(editor.brush);
    showBrush();
  }

  function remove() {
    editor.unload();
    original = null;
    editorBox.hidden = true;
    section.classList.remove("has-input");
    error("");
    changed();
  }

  // "Use as input": a gallery image, fetched through the gallery's door, so only an image
  // the person may see can be used.
  async function useImage(id) {
    if (!IMAGE_ID.test(id)) {
      error("That link does not name an image.");
      return;
    }
    let response;
    try {
      response = await fetch(`/images/${id}.png`);
    } catch {
      error("Studio could not be reached to fetch that image. Check your connection and retry.");
      return;
    }
    if (response.status === 404) {
      error("That image could not be used: it was deleted, or you may not see it.");
    } else if (!response.ok) {
      error(`That image could not be fetched (HTTP ${response.status}).`);
    } else {
      await load(await response.blob());
    }
  }

  // --- Width and height follow the input --------------------------------------------------

  function followSize() {
    if (!editor.loaded) return;
    const round = (n) => Math.max(8, Math.floor(n / 8) * 8);
    const want = { width: round(editor.width), height: round(editor.height) };
    if (!sizedByHand) {
      for (const key of ["width", "height"]) if (sizes[key]) sizes[key].value = want[key];
    }
    const differs = ["width", "height"].some((key) => sizes[key] && Number(sizes[key].value) !== want[key]);
    matchSize.hidden = !differs;
    matchSize.textContent = `Use the input's size (${want.width}×${want.height})`;
  }

  for (const input of Object.values(sizes)) {
    input?.addEventListener("input", () => {
      if (editor.loaded) sizedByHand = true;
      followSize();
    });
  }
  matchSize.addEventListener("click", () => {
    sizedByHand = false;
    followSize();
  });

  // After any change to the picture, its padding or its mask: the facts line, which fields
  // apply (strength and mask options with an input; the hires fix without), the size.
  function changed() {
    const has = editor.loaded;
    options.disabled = !has;
    if (hires) hires.disabled = has;
    $("hires-note").hidden = !has;
    $("mask-undo").disabled = !editor.canUndo;
    if (!has) return;
    const what = editor.padded ? "extended; the new area is masked" : editor.painted() ? "painted" : "none: the whole picture varies";
    facts.textContent = `Input ${editor.width}×${editor.height} px · mask: ${what}`;
    const maskOptions = $("mask-options");
    maskOptions.disabled = maskOptions.hidden = !editor.masked;
    followSize();
  }

  // --- Mask tools ---------------------------------------------------------------------------

  function showBrush() {
    editor.brush = Number($("brush-size").value);
    $("brush-size-value").textContent = `${editor.brush} px`;
  }
  $("brush-size").addEventListener("input", showBrush);
  section.querySelectorAll("input[name=mask-tool]").forEach((radio) => {
    radio.addEventListener("change", () => { editor.tool = radio.value; });
  });
  $("mask-undo").addEventListener("click", () => editor.undo());
  $("mask-clear").addEventListener("click", () => editor.clear());
  $("mask-invert").addEventListener("click", () => editor.invert());
  $("input-remove").addEventListener("click", remove);

  // A mask from a file (black and white, or transparent where painted) replaces the painting.
  maskFile?.addEventListener("change", async () => {
    const file = maskFile.files[0];
    maskFile.value = "";
    if (!file || !editor.loaded) return;
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.src = url;
    try {
      await image.decode();
      editor.loadMask(image);
    } catch (exc) {
      const slot = section.querySelector('[data-error-for="mask"]');
      slot.textContent = exc.message || "That file could not be read as an image.";
    } finally {
      URL.revokeObjectURL(url);
    }
  });

  // --- Outpainting: extend the canvas -------------------------------------------------------

  const sides = [...section.querySelectorAll("input[data-side]")];
  const extendBy = $("extend-by");
  const extendFill = $("extend-fill");

  function resetPadding() {
    sides.forEach((box) => { box.checked = false; });
  }

  function pad() {
    if (!editor.loaded) return;
    const by = Math.max(8, Math.min(2048, Math.round(Number(extendBy.value) / 8) * 8 || 64));
    const padding = Object.fromEntries(sides.map((box) => [box.dataset.side, box.checked ? by : 0]));
    editor.setPadding(padding, extendFill.value);
  }
  sides.forEach((box) => box.addEventListener("change", pad));
  extendFill.addEventListener("change", pad);
  extendBy.addEventListener("change", () => {
    extendBy.value = Math.max(8, Math.round(Number(extendBy.value) / 8) * 8 || 64);
    pad();
  });

  // --- Choosing, dropping, pasting ----------------------------------------------------------

  $("input-choose").addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    fileInput.value = "";  // so that choosing the same file again loads it again
    if (file) load(file);
  });

  // Drop a file anywhere on the form, or an image dragged from this page (a result).
  const dragging = (event) => [...event.dataTransfer.types].some((t) => t === "Files" || t === "text/uri-list");
  form.addEventListener("dragover", (event) => {
    if (!dragging(event)) return;
    event.preventDefault();
    section.classList.add("dropping");
  });
  form.addEventListener("dragleave", (event) => {
    if (!form.contains(event.relatedTarget)) section.classList.remove("dropping");
  });
  form.addEventListener("drop", (event) => {
    section.classList.remove("dropping");
    const file = event.dataTransfer.files[0];
    const uri = event.dataTransfer.getData("text/uri-list").split("\n")[0].trim();
    if (!file && !uri) return;
    event.preventDefault();
    if (file) {
      load(file);
      return;
    }
    const ours = new URL(uri, location.href);
    const id = ours.origin === location.origin && ours.pathname.match(/^\/images\/([^/]+)\.png$/);
    if (id) useImage(id[1]);
    else error("Drop an image file, or a result from this page.");
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file) return;
    event.preventDefault();
    load(file);
  });

  // --- What the form sends ------------------------------------------------------------------

  // Replace the file inputs' entries with data URLs: the picture as chosen (or padded, or
  // converted to PNG), and the mask when anything is masked.
  function fill(data) {
    data.delete("init_image");
    data.delete("mask");
    if (!editor.loaded) return;
    data.set("init_image", editor.padded || !original ? editor.pictureDataURL() : original);
    const mask = editor.maskDataURL();
    if (mask) data.set("mask", mask);
  }

  window.StudioInput = {
    fill,
    useImage,
    show: () => section.scrollIntoView({ block: "start" }),
    editor,
  };
  changed();
  const asked = new URLSearchParams(location.search).get("input_image");
  if (asked) useImage(asked);
})();
