// The demo page of `gencompress demo`: loads the artifact in its browser runtime and draws new
// samples on a button press: random latents (and labels), or an image the user picks for
// image-to-image models. Every file is read from its .b64.js copy in this folder (base64 of
// the gzipped bytes, loaded as a classic script): a page opened from file:// may not fetch its
// neighbours, but it may run their scripts, so the same page works from a disk or a server.
(function () {
  'use strict';
  const R = self.GencompressRuntimes;
  const config = JSON.parse(document.getElementById('config').textContent);
  const button = document.getElementById('draw');
  const status = document.getElementById('status');
  const samples = document.getElementById('samples');
  let model = null;
  let seed = config.seed;

  function say(text, error) {
    status.textContent = text;
    status.className = error ? 'error' : '';
  }

  function script(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error('cannot load ' + src + ' (is it in this folder?)'));
      document.head.appendChild(s);
    });
  }

  async function files(name) {
    await script(name + '.b64.js');
    const packed = Uint8Array.from(atob(self.GENCOMPRESS_FILES[name]), (c) => c.charCodeAt(0));
    delete self.GENCOMPRESS_FILES[name];
    const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // A small seeded generator (mulberry32) and Box-Muller: standard-normal latents, as the
  // model saw in calibration, the same every time the page opens.
  function random() {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  function normal() {
    return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  }

  function size(shape) {
    return shape.slice(1).reduce((a, b) => a * b, 1);
  }

  function labelValue(input) {
    const select = document.querySelector('select[data-input="' + input.name + '"]');
    const chosen = select ? select.value : 'random';
    return chosen === 'random' ? Math.floor(random() * input.ids) : Number(chosen);
  }

  // The user's image (or, until one is chosen, a test pattern) at the input's size, scaled to
  // the input range the model was calibrated with.
  async function imageInput(input) {
    const [, h, w, c] = input.shape;
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    const g = canvas.getContext('2d');
    const chosen = document.getElementById('image');
    if (chosen && chosen.files.length) {
      const bitmap = await createImageBitmap(chosen.files[0]);
      g.drawImage(bitmap, 0, 0, w, h);
    } else {
      const gradient = g.createLinearGradient(0, 0, w, h);
      gradient.addColorStop(0, '#1d4e89');
      gradient.addColorStop(0.5, '#f6c90e');
      gradient.addColorStop(1, '#b31b1b');
      g.fillStyle = gradient;
      g.fillRect(0, 0, w, h);
      g.fillStyle = '#ffffff';
      g.beginPath();
      g.arc(w * (0.3 + 0.4 * random()), h * (0.3 + 0.4 * random()), Math.min(w, h) / 5, 0, 2 * Math.PI);
      g.fill();
    }
    const rgba = g.getImageData(0, 0, w, h).data;
    const [lo, hi] = config.input_range;
    const data = new Float32Array(h * w * c);
    for (let p = 0; p < h * w; p++) {
      for (let k = 0; k < c; k++) data[p * c + k] = lo + ((hi - lo) * rgba[p * 4 + Math.min(k, 2)]) / 255;
    }
    return {data, shape: [1, h, w, c]};
  }

  async function inputs() {
    const arrays = [];
    for (const input of config.inputs) {
      const shape = [1].concat(input.shape.slice(1));
      if (input.ids) arrays.push({data: Int32Array.from({length: size(shape)}, () => labelValue(input)), shape});
      else if (config.image_input === input.name) arrays.push(await imageInput(input));
      else arrays.push({data: Float32Array.from({length: size(shape)}, normal), shape});
    }
    return arrays;
  }

  // One output as a canvas: an image (NHWC, 1, 3 or 4 channels) scaled from the output range,
  // or anything else as a line of its values.
  function draw(output) {
    const [lo, hi] = config.output_range;
    const shape = output.shape;
    const canvas = document.createElement('canvas');
    const g = canvas.getContext('2d');
    const byte = (v) => Math.max(0, Math.min(255, Math.round((255 * (v - lo)) / (hi - lo || 1))));
    if (shape.length === 4 && [1, 3, 4].includes(shape[3])) {
      const [, h, w, c] = shape;
      canvas.width = w;
      canvas.height = h;
      const image = g.createImageData(w, h);
      for (let p = 0; p < h * w; p++) {
        for (let k = 0; k < 3; k++) image.data[p * 4 + k] = byte(output.data[p * c + (c === 1 ? 0 : k)]);
        image.data[p * 4 + 3] = 255;
      }
      g.putImageData(image, 0, 0);
      const scale = Math.max(1, Math.floor(160 / Math.max(w, h)));
      canvas.style.width = w * scale + 'px';
      canvas.style.height = h * scale + 'px';
    } else {
      canvas.width = 320;
      canvas.height = 120;
      g.fillStyle = '#fff';
      g.fillRect(0, 0, 320, 120);
      g.strokeStyle = '#1d4e89';
      g.beginPath();
      output.data.forEach((v, i) => g.lineTo((320 * i) / Math.max(1, output.data.length - 1), 120 - (120 * byte(v)) / 255));
      g.stroke();
    }
    return canvas;
  }

  async function drawSamples() {
    button.disabled = true;
    try {
      samples.replaceChildren();
      let ms = 0;
      for (let s = 0; s < config.samples; s++) {
        const feeds = model.feeds(await inputs());
        const t0 = performance.now();
        const outputs = await model.run(feeds);
        ms += performance.now() - t0;
        model.release(feeds);
        outputs.forEach((o) => samples.appendChild(draw(o)));
      }
      say('drew ' + config.samples + ' sample' + (config.samples > 1 ? 's' : '') + ' in ' + ms.toFixed(1) + ' ms (' + runtimeName + ')');
    } catch (e) {
      say('the runtime failed: ' + R.oneLine(e), true);
    } finally {
      button.disabled = false;
    }
  }

  let runtimeName = '';
  async function start() {
    try {
      const where = {files, url: (name) => name, version: config.version};
      const runtime = await R[config.kind](where, 1);
      model = await runtime.load(await files(config.model_file));
      runtimeName = runtime.runtime + ' ' + runtime.version + ', ' + runtime.build;
      button.textContent = config.image_input ? 'Run on the image' : 'Draw new samples';
      button.disabled = false;
      button.addEventListener('click', drawSamples);
      await drawSamples();
    } catch (e) {
      say('could not load ' + config.model_file + ': ' + R.oneLine(e), true);
      button.textContent = 'Unavailable';
    }
  }

  start();
})();
