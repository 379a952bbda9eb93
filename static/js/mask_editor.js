// The mask editor of the generate page: the input image on one canvas, the mask painted over
// it on a second, with a brush and an eraser, undo, clear and invert; and outpainting, which
// pads the input on chosen sides. What it sends (docs/architecture.md, issue 21):
// - the input: the picture as given, or, once padded, a PNG of the padded picture;
// - the mask: a black and white PNG at the input's exact pixel size, white where the model
//   repaints: what was painted, plus all of any padding.
// Painting happens in the picture's own pixels (`paint`, white on transparent), so padding
// can change after painting without moving a stroke.
(() => {
  "use strict";
  // Undo keeps whole snapshots of the painting: fewer of them for a large picture.
  const UNDO_BYTES = 192 * 1024 * 1024;
  const UNDO_STEPS = 30;
  const SIDES = ["left", "top", "right", "bottom"];

  function canvas(width, height) {
    return Object.assign(document.createElement("canvas"), { width, height });
  }

  class MaskEditor {
    // `picture` and `overlay`: two canvases stacked in `stage`; `onChange` is called after
    // every change to the picture, the padding or the mask.
    constructor({ stage, picture, overlay, onChange }) {
      this.stage = stage;
      this.picture = picture;
      this.overlay = overlay;
      this.onChange = onChange || (() => {});
      this.source = null;  // the image as loaded (HTMLImageElement)
      this.padding = { left: 0, top: 0, right: 0, bottom: 0 };
      this.fill = "edges";
      this.tool = "brush";
      this.brush = 16;
      this.color = "rgb(255, 64, 129)";
      this.undoStack = [];
      this.stroke = null;
      overlay.addEventListener("pointerdown", (event) => this.down(event));
      overlay.addEventListener("pointermove", (event) => this.move(event));
      for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
        overlay.addEventListener(name, (event) => this.up(event));
      }
    }

    get loaded() { return this.source !== null; }

    // The input's size: the picture's, plus any padding.
    get width() { return this.source.naturalWidth + this.padding.left + this.padding.right; }
    get height() { return this.source.naturalHeight + this.padding.top + this.padding.bottom; }
    get padded() { return SIDES.some((side) => this.padding[side] > 0); }

    load(image) {
      this.source = image;
      this.paint = canvas(image.naturalWidth, image.naturalHeight);
      this.padding = { left: 0, top: 0, right: 0, bottom: 0 };
      this.undoStack = [];
      this.brush = Math.max(2, Math.round(Math.max(image.naturalWidth, image.naturalHeight) / 16));
      this.redraw();
    }

    unload() {
      this.source = null;
      this.paint = null;
      this.undoStack = [];
    }

    setPadding(padding, fill) {
      this.padding = { ...this.padding, ...padding };
      this.fill = fill || this.fill;
      this.redraw();
    }

    // --- Drawing the stage -----------------------------------------------------------------

    redraw() {
      const { width, height } = this;
      for (const layer of [this.picture, this.overlay]) {
        if (layer.width !== width || layer.height !== height) Object.assign(layer, { width, height });
      }
      this.drawPicture(this.picture.getContext("2d"));
      this.drawOverlay();
      this.stage.style.setProperty("--ratio", String(width / height));  // studio.css sizes it
      this.onChange();
    }

    // The padded picture: the image, its new borders filled with its edge pixels stretched
    // outwards ("edges") or a mid grey, which gives the model something neutral to repaint.
    drawPicture(ctx) {
      const image = this.source;
      const { left, top } = this.padding;
      const [w, h] = [image.naturalWidth, image.naturalHeight];
      ctx.imageSmoothingEnabled = false;
      ctx.fillStyle = "rgb(128, 128, 128)";
      ctx.fillRect(0, 0, this.width, this.height);
      if (this.fill === "edges" && this.padded) {
        const [W, H] = [this.width, this.height];
        const right = W - left - w;
        const bottom = H - top - h;
        // Rows and columns: [source start, size, destination start, size] along each axis.
        const cols = [[0, 1, 0, left], [0, w, left, w], [w - 1, 1, left + w, right]];
        const rows = [[0, 1, 0, top], [0, h, top, h], [h - 1, 1, top + h, bottom]];
        for (const [sx, sw, dx, dw] of cols) {
          for (const [sy, sh, dy, dh] of rows) {
            if (dw > 0 && dh > 0) ctx.drawImage(image, sx, sy, sw, sh, dx, dy, dw, dh);
          }
        }
      } else {
        ctx.drawImage(image, left, top);
      }
    }

    // The mask as people see it: painted strokes and padding in one colour; the canvas's
    // opacity (studio.css) lets the picture show through.
    drawOverlay() {
      const ctx = this.overlay.getContext("2d");
      const { left, top } = this.padding;
      ctx.globalCompositeOperation = "source-over";
      ctx.clearRect(0, 0, this.width, this.height);
      ctx.drawImage(this.paint, left, top);
      ctx.globalCompositeOperation = "source-in";
      ctx.fillStyle = this.color;
      ctx.fillRect(0, 0, this.width, this.height);
      ctx.globalCompositeOperation = "source-over";
      for (const [x, y, w, h] of this.paddingRects()) ctx.fillRect(x, y, w, h);
    }

    paddingRects() {
      const { left, top, right, bottom } = this.padding;
      const [W, H] = [this.width, this.height];
      return [[0, 0, left, H], [W - right, 0, right, H], [0, 0, W, top], [0, H - bottom, W, bottom]]
        .filter(([, , w, h]) => w > 0 && h > 0);
    }

    // --- Painting ---------------------------------------------------------------------------

    // A pointer's position in the picture's own pixels (the stage is drawn scaled).
    point(event) {
      const box = this.overlay.getBoundingClientRect();
      return {
        x: ((event.clientX - box.left) * this.width) / box.width - this.padding.left,
        y: ((event.clientY - box.top) * this.height) / box.height - this.padding.top,
      };
    }

    down(event) {
      if (!this.loaded || !event.isPrimary || event.button > 0) return;
      event.preventDefault();
      this.overlay.setPointerCapture?.(event.pointerId);
      this.remember();
      this.stroke = { id: event.pointerId, last: this.point(event) };
      this.line(this.stroke.last, this.stroke.last);
    }

    move(event) {
      if (!this.stroke || event.pointerId !== this.stroke.id) return;
      event.preventDefault();
      const events = event.getCoalescedEvents?.() || [];
      for (const each of events.length ? events : [event]) {
        const next = this.point(each);
        this.line(this.stroke.last, next);
        this.stroke.last = next;
      }
    }

    up(event) {
      if (!this.stroke || event.pointerId !== this.stroke.id) return;
      this.stroke = null;
      this.onChange();
    }

    line(from, to) {
      const ctx = this.paint.getContext("2d");
      ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = this.brush;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.beginPath();
      if (from.x === to.x && from.y === to.y) {
        // A tap: canvas drops a zero-length line, round cap and all, so draw the dot.
        ctx.fillStyle = "#fff";
        ctx.arc(to.x, to.y, this.brush / 2, 0, 2 * Math.PI);
        ctx.fill();
      } else {
        ctx.moveTo(from.x, from.y);
        ctx.lineTo(to.x, to.y);
        ctx.stroke();
      }
      this.drawOverlay();
    }

    // --- Undo, clear, invert -----------------------------------------------------------------

    remember() {
      const { width, height } = this.paint;
      const keep = Math.max(1, Math.min(UNDO_STEPS, Math.floor(UNDO_BYTES / (4 * width * height))));
      this.undoStack.push(this.paint.getContext("2d").getImageData(0, 0, width, height));
      this.undoStack.splice(0, Math.max(0, this.undoStack.length - keep));
    }

    get canUndo() { return this.undoStack.length > 0; }

    undo() {
      if (!this.canUndo) return;
      this.paint.getContext("2d").putImageData(this.undoStack.pop(), 0, 0);
      this.drawOverlay();
      this.onChange();
    }

    clear() {
      if (!this.painted()) return;
      this.remember();
      this.paint.getContext("2d").clearRect(0, 0, this.paint.width, this.paint.height);
      this.drawOverlay();
      this.onChange();
    }

    // Painted becomes unpainted and the other way round, over the picture; padding stays
    // masked, since a padded border has nothing to keep.
    invert() {
      this.remember();
      const ctx = this.paint.getContext("2d");
      const data = ctx.getImageData(0, 0, this.paint.width, this.paint.height);
      for (let i = 0; i < data.data.length; i += 4) {
        const on = data.data[i + 3] < 128;
        data.data.fill(on ? 255 : 0, i, i + 4);
      }
      ctx.putImageData(data, 0, 0);
      this.drawOverlay();
      this.onChange();
    }

    // A mask from a file, read as the server reads one: by its alpha when it has transparent
    // pixels (opaque paint repaints), else by its brightness. It must be the picture's size.
    loadMask(image) {
      const [w, h] = [this.paint.width, this.paint.height];
      if (image.naturalWidth !== w || image.naturalHeight !== h) {
        throw new Error(`That mask is ${image.naturalWidth}×${image.naturalHeight} but the picture is ${w}×${h}; a mask must be exactly the picture's size (it is never resized).`);
      }
      const scratch = canvas(w, h).getContext("2d");
      scratch.drawImage(image, 0, 0);
      const data = scratch.getImageData(0, 0, w, h);
      let byAlpha = false;
      for (let i = 3; i < data.data.length && !byAlpha; i += 4) byAlpha = data.data[i] < 255;
      for (let i = 0; i < data.data.length; i += 4) {
        const [r, g, b, a] = data.data.subarray(i, i + 4);
        const on = byAlpha ? a >= 128 : 0.299 * r + 0.587 * g + 0.114 * b >= 128;
        data.data.fill(on ? 255 : 0, i, i + 4);
      }
      this.remember();
      this.paint.getContext("2d").putImageData(data, 0, 0);
      this.drawOverlay();
      this.onChange();
    }

    // Whether any pixel of the picture is painted (half covered or more, as the mask rounds).
    painted() {
      if (!this.loaded) return false;
      const { data } = this.paint.getContext("2d").getImageData(0, 0, this.paint.width, this.paint.height);
      for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) return true;
      return false;
    }

    get masked() { return this.loaded && (this.padded || this.painted()); }

    // --- What the page sends -----------------------------------------------------------------

    // The mask at the input's size: white where painted (alpha rounded, so the anti-aliased
    // rim of a stroke does not make grey) and over the padding, black elsewhere.
    maskCanvas() {
      const out = canvas(this.width, this.height);
      const ctx = out.getContext("2d");
      const { left, top } = this.padding;
      const painted = this.paint.getContext("2d").getImageData(0, 0, this.paint.width, this.paint.height);
      const mask = ctx.createImageData(this.width, this.height);
      mask.data.fill(255);  // white, opaque: the padding; the picture's area is written below
      for (let y = 0; y < this.paint.height; y += 1) {
        for (let x = 0; x < this.paint.width; x += 1) {
          const value = painted.data[(y * this.paint.width + x) * 4 + 3] >= 128 ? 255 : 0;
          const at = ((y + top) * this.width + x + left) * 4;
          mask.data[at] = mask.data[at + 1] = mask.data[at + 2] = value;
        }
      }
      ctx.putImageData(mask, 0, 0);
      return out;
    }

    maskDataURL() { return this.masked ? this.maskCanvas().toDataURL("image/png") : null; }

    // The padded picture as a PNG (the picture itself travels as its own file, unpadded).
    pictureDataURL() {
      const out = canvas(this.width, this.height);
      this.drawPicture(out.getContext("2d"));
      return out.toDataURL("image/png");
    }
  }

  window.MaskEditor = MaskEditor;
})();
