// gencompress: one loader for the two browser runtimes, shared by the measuring page
// (gencompress --browser) and the demo page (gencompress demo).
//
// A page gives it the bytes of the runtime's files through `files(name)` (the demo reads them
// from its own .js copies, which a page opened from file:// may load) or a `base` URL (the
// measuring page, served over http, where the threaded builds start their workers from real
// URLs). Either way every file comes from the page's own folder: nothing from a CDN.
//
// A loaded model is {inputs, outputs, feeds(arrays), run(feeds), release(feeds)}: inputs and
// outputs as [{name, dtype, shape}], arrays as [{data: TypedArray, shape}] in input order, run
// giving [{data, shape}] in output order (copies: the runtime's buffers are freed).
(function (global) {
  'use strict';
  const R = (global.GencompressRuntimes = {});

  R.blobUrl = (bytes, type) => URL.createObjectURL(new Blob([bytes], {type: type || 'text/javascript'}));

  // The first line of an error: what the runtime said, without its stack.
  R.oneLine = (error) => String((error && error.message) || error).split('\n')[0].trim().slice(0, 400);

  const TYPED = {float32: Float32Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
    int64: BigInt64Array, float16: Uint16Array, bool: Uint8Array};

  // Values sent in one dtype (float32 or int32 from Python) as the model's own input dtype.
  R.asDtype = function (data, dtype) {
    const Kind = TYPED[dtype];
    if (!Kind) throw new Error('input dtype ' + dtype + ' is not supported here');
    if (data instanceof Kind) return data;
    if (Kind === BigInt64Array) return BigInt64Array.from(data, (v) => BigInt(Math.round(v)));
    return Kind.from(data);
  };

  function script(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error('cannot load ' + src));
      document.head.appendChild(s);
    });
  }

  // ------------------------------------------------------------------ onnxruntime-web

  R.onnx = async function (where, threads) {
    if (!global.ort) await script(where.base ? where.base + 'ort/ort.wasm.min.js' : where.url('ort.wasm.min.js'));
    const ort = global.ort;
    ort.env.logLevel = 'error';
    ort.env.wasm.numThreads = threads;
    if (where.files) {
      ort.env.wasm.wasmBinary = await where.files('ort-wasm-simd-threaded.wasm');
      ort.env.wasm.wasmPaths = {mjs: R.blobUrl(await where.files('ort-wasm-simd-threaded.mjs'))};
    } else {
      ort.env.wasm.wasmPaths = where.base + 'ort/';
    }
    return {
      runtime: 'onnxruntime-web',
      version: ort.env.versions.web,
      build: 'ort-wasm-simd-threaded.wasm (SIMD), ' + threads + ' thread' + (threads > 1 ? 's' : ''),
      async load(bytes) {
        const session = await ort.InferenceSession.create(bytes, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
        const shape = (m) => (m.shape || []).map((d) => (typeof d === 'number' ? d : -1));
        return {
          inputs: session.inputMetadata.map((m) => ({name: m.name, dtype: m.type, shape: shape(m)})),
          outputs: session.outputMetadata.map((m) => ({name: m.name, dtype: m.type, shape: shape(m)})),
          feeds(arrays) {
            const feeds = {};
            session.inputMetadata.forEach((m, i) => {
              feeds[m.name] = new ort.Tensor(m.type, R.asDtype(arrays[i].data, m.type), arrays[i].shape);
            });
            return feeds;
          },
          async run(feeds) {
            const out = await session.run(feeds);
            return session.outputNames.map((n) => {
              const t = out[n];
              const copy = {data: t.data.slice(), shape: Array.from(t.dims)};
              t.dispose();
              return copy;
            });
          },
          release() {},
          close: () => session.release(),
        };
      },
    };
  };

  // ------------------------------------------------------------------ LiteRT.js

  // LiteRT.js writes its C++ log (INFO lines included) to stderr, which emscripten sends to
  // console.error: INFO/WARNING go to console.debug; other lines stay errors and the last is
  // kept for the one-line error of a model that does not load.
  let lastLiteRtError = '';
  function liteRtLog(text) {
    if (/^(INFO|WARNING|VERBOSE)\b/.test(text) || /^Created TensorFlow Lite/.test(text)) console.debug(text);
    else {
      lastLiteRtError = text;
      console.error(text);
    }
  }

  R.litert = async function (where, threads) {
    const utils = where.files ? R.blobUrl(await where.files('wasm-utils.js')) : where.base + 'litert-utils/dist/index.js';
    const map = document.createElement('script');
    map.type = 'importmap';  // the core module imports its helper by package name
    map.textContent = JSON.stringify({imports: {'@litertjs/wasm-utils': utils}});
    document.head.appendChild(map);
    const litert = await import(where.files ? R.blobUrl(await where.files('core.js')) : where.base + 'litert/dist/index.js');
    const relaxed = await litert.supportsFeature('relaxedSimd');
    const glue = threads > 1 ? 'litert_wasm_threaded_internal' : relaxed ? 'litert_wasm_internal' : 'litert_wasm_compat_internal';
    global.Module = {print: (t) => console.debug(t), printErr: liteRtLog};
    if (where.files) {
      // A folder URL would make LiteRT.js fetch the .wasm: hand it the bytes and the glue
      // script as a blob (the "#name.js" tells LiteRT.js it is the script itself).
      global.Module.wasmBinary = (await where.files(glue + '.wasm')).buffer;
      await litert.loadLiteRt(R.blobUrl(await where.files(glue + '.js')) + '#' + glue + '.js');
    } else {
      await litert.loadLiteRt(where.base + 'litert/wasm/', {threads: threads > 1});
    }
    const details = (d) => ({name: d.name, dtype: d.dtype, shape: Array.from(d.shape)});
    return {
      runtime: 'LiteRT.js',
      version: where.version || '',
      build: glue + '.wasm (' + (relaxed ? 'relaxed SIMD' : 'SIMD') + '), ' + threads + ' thread' + (threads > 1 ? 's' : ''),
      async load(bytes) {
        lastLiteRtError = '';
        let model;
        try {
          model = await litert.loadAndCompile(bytes, {accelerator: 'wasm', cpuOptions: {numThreads: threads}});
        } catch (e) {
          throw new Error(R.oneLine(e) === 'undefined' || !R.oneLine(e) ? lastLiteRtError : R.oneLine(e));
        }
        const inputs = model.getInputDetails().map(details);
        return {
          inputs,
          outputs: model.getOutputDetails().map(details),
          feeds: (arrays) => arrays.map((a, i) => new litert.Tensor(R.asDtype(a.data, inputs[i].dtype), a.shape)),
          async run(feeds) {
            const out = await model.run(feeds);
            return out.map((t) => {
              const copy = {data: t.toTypedArray().slice(), shape: Array.from(t.type.layout.dimensions)};
              t.delete();
              return copy;
            });
          },
          release: (feeds) => feeds.forEach((t) => t.delete()),
          close: () => model.delete(),
        };
      },
    };
  };
})(self);
