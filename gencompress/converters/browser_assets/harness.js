// The measuring page of `gencompress --browser`: Python (Playwright) loads a runtime, then each
// artifact, runs the held-out inputs through it and times it here, in the page, so the figures
// are the runtime's own and not the cost of talking to the page.
(function () {
  'use strict';
  const R = self.GencompressRuntimes;
  const models = {};
  let runtime = null;
  const KINDS = {float32: Float32Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array, int64: BigInt64Array};

  function decode(b64, dtype) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new KINDS[dtype](bytes.buffer);
  }

  function encode(typed) {
    const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  function dtypeOf(typed) {
    return Object.keys(KINDS).find((k) => typed instanceof KINDS[k]) || 'float32';
  }

  // Sample `s` of each input ([{data, shape}] with a batch of `count` samples) as a batch of one.
  function sample(inputs, s) {
    return inputs.map((x) => {
      const size = x.data.length / x.count;
      return {data: x.data.subarray(s * size, (s + 1) * size), shape: [1].concat(x.shape.slice(1))};
    });
  }

  function decoded(inputs, count) {
    return inputs.map((x) => ({data: decode(x.b64, x.dtype), shape: x.shape, count}));
  }

  self.gc = {
    async start(kind, threads, base, version) {
      try {
        runtime = await R[kind]({base, version}, threads);
      } catch (e) {
        return {error: R.oneLine(e)};
      }
      return {runtime: runtime.runtime, version: runtime.version, build: runtime.build, isolated: self.crossOriginIsolated,
        cores: navigator.hardwareConcurrency, userAgent: navigator.userAgent};
    },

    async load(id, url) {
      try {
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
        const model = await runtime.load(bytes);
        models[id] = model;
        return {inputs: model.inputs, outputs: model.outputs};
      } catch (e) {
        return {error: R.oneLine(e)};
      }
    },

    async run(id, inputs, count) {
      const model = models[id];
      const arrays = decoded(inputs, count);
      const parts = [];
      try {
        for (let s = 0; s < count; s++) {
          const feeds = model.feeds(sample(arrays, s));
          parts.push(await model.run(feeds));
          model.release(feeds);
        }
      } catch (e) {
        return {error: R.oneLine(e)};
      }
      return {outputs: parts[0].map((first, o) => {
        const all = new first.data.constructor(first.data.length * count);
        parts.forEach((p, s) => all.set(p[o].data, s * first.data.length));
        // one sample: the tensor's own shape (a debug copy exposes scalars and 1-D tensors too)
        return {b64: encode(all), dtype: dtypeOf(all), shape: count === 1 ? first.shape : [count].concat(first.shape.slice(1))};
      })};
    },

    // The latency protocol of gencompress.report.latency, in the page: warm-up runs (at most
    // `warmup`, or a fifth of `maxSeconds`), then timed runs (at most `runs`, at least
    // `minRuns`, within the rest of the time); milliseconds per run.
    async time(id, inputs, warmup, runs, maxSeconds, minRuns) {
      const model = models[id];
      const feeds = model.feeds(sample(decoded(inputs, 1), 0));
      const times = [];
      try {
        let start = performance.now();
        for (let i = 0; i < warmup; i++) {
          await model.run(feeds);
          if (performance.now() - start > (maxSeconds * 1000) / 5) break;
        }
        start = performance.now();
        for (let i = 0; i < runs; i++) {
          const t0 = performance.now();
          await model.run(feeds);
          times.push(performance.now() - t0);
          if (i + 1 >= minRuns && performance.now() - start > (maxSeconds * 1000 * 4) / 5) break;
        }
      } catch (e) {
        return {error: R.oneLine(e)};
      } finally {
        model.release(feeds);
      }
      return {times};
    },

    close(id) {
      if (models[id]) models[id].close();
      delete models[id];
    },
  };
})();
