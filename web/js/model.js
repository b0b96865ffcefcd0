// Loading an export made by diff-export-onnx (model.json + model.onnx) into onnxruntime-web.

import * as ort from "../node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { makeTokenizer } from "./tokenizer.js";

const FORMAT_VERSION = 1;
const OBJECTIVE = "masked_diffusion";

// The wasm files are served from this page's own copy of the npm package; one thread needs no
// cross-origin isolation, so the page works from any static host.
ort.env.wasm.wasmPaths = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1;

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`could not fetch ${what} from ${url}: ${error.message}`, { cause: error });
  }
  if (!response.ok) throw new Error(`could not fetch ${what} from ${url}: HTTP ${response.status}.`);
  return response;
}

/** {config, tokenizer, tokens, run(sequences)} for the export in directory `baseUrl`. */
export async function loadExport(baseUrl) {
  const configUrl = new URL("model.json", baseUrl);
  const response = await fetchOk(configUrl, "the model description");
  let config;
  try {
    config = await response.json();
  } catch (error) {
    throw new Error(`${configUrl} is not valid JSON (${error.message}): re-run diff-export-onnx.`, { cause: error });
  }
  if (config.format !== FORMAT_VERSION || config.objective !== OBJECTIVE) {
    throw new Error(`${configUrl} is format ${config.format} with objective "${config.objective}"; this page `
      + `reads format ${FORMAT_VERSION} "${OBJECTIVE}" exports: re-export with this version of diff-export-onnx.`);
  }
  const modelUrl = new URL(config.model_file, baseUrl);
  const bytes = new Uint8Array(await (await fetchOk(modelUrl, "the ONNX model")).arrayBuffer());
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  } catch (error) {
    throw new Error(`onnxruntime-web could not load ${modelUrl}: ${error.message ?? error}`, { cause: error });
  }
  const vocabSize = config.tokens.vocab_size;

  /** Logits (one Float32Array [T * vocabSize] per sequence) of equally long sequences, all attended. */
  async function run(sequences) {
    const batch = sequences.length, length = sequences[0].length;
    const ids = BigInt64Array.from(sequences.flat(), (id) => BigInt(id));
    const attention = new BigInt64Array(batch * length).fill(1n);
    const outputs = await session.run({
      input_ids: new ort.Tensor("int64", ids, [batch, length]),
      attention_mask: new ort.Tensor("int64", attention, [batch, length]),
    });
    const logits = outputs.logits;
    if (logits.dims[2] !== vocabSize) {
      throw new Error(`the model returned ${logits.dims[2]} logits per position; model.json says ${vocabSize}.`);
    }
    const row = length * vocabSize;
    return Array.from({ length: batch }, (_, b) => logits.data.subarray(b * row, (b + 1) * row));
  }

  return { config, tokenizer: makeTokenizer(config.tokenizer), tokens: config.tokens, run };
}
