// Runs functions of web/js/ for the Python tests: reads one JSON request on stdin, prints one JSON answer.
// Requests: {"sample": {...}}, {"uniforms": {seed, count}}, {"encode": {table, texts}}, {"decode": {...}},
// {"call": {name, args}} (a plain exported function of sampler.js), {"trace": {frames, tokens, pieces}} (trace.js's
// cells of each frame, pieces[id] the display text of token id).
import { readFileSync } from "node:fs";
import { Mulberry32 } from "../web/js/rng.js";
import * as sampler from "../web/js/sampler.js";
import { makeTokenizer } from "../web/js/tokenizer.js";
import { traceCells } from "../web/js/trace.js";

// The fake denoiser of tests/test_web_sampler.py: exact float32 logits from integer arithmetic on the ids.
function fakeModel(vocabSize, boosts) {
  return async (sequences) => sequences.map((ids) => {
    const h = ids.reduce((sum, id, j) => (sum + id * (j + 1)) % 9973, 0);
    const logits = new Float32Array(ids.length * vocabSize);
    for (let i = 0; i < ids.length; i++) {
      for (let v = 0; v < vocabSize; v++) {
        const a = (h * 31 + i * 1009 + v * 7919) % 65521;
        logits[i * vocabSize + v] = ((a * 40503) % 65536) / 8192 + (boosts[`${i},${v}`] ?? 0);
      }
    }
    return logits;
  });
}

async function answer(request) {
  if (request.sample) {
    const { prompt, settings, tokens, boosts, seed, suffix } = request.sample;
    const frames = [];
    const run = sampler.sample(fakeModel(tokens.vocab_size, boosts ?? {}), prompt, settings, tokens,
                               new Mulberry32(seed ?? 0), suffix ?? []);
    for await (const frame of run) frames.push(frame);
    return frames;
  }
  if (request.uniforms) {
    const rng = new Mulberry32(request.uniforms.seed);
    return Array.from({ length: request.uniforms.count }, () => rng.uniform());
  }
  if (request.encode) {
    const tokenizer = makeTokenizer(request.encode.table);
    return request.encode.texts.map((text) => tokenizer.encode(text));
  }
  if (request.decode) {
    const tokenizer = makeTokenizer(request.decode.table);
    return request.decode.ids.map((ids) => tokenizer.decode(ids, { skipSpecial: request.decode.skip }));
  }
  if (request.call) {
    const args = request.call.args;
    if (request.call.name === "sampleToken") {
      const draws = args[2];
      return sampler.sampleToken(args[0], args[1], { uniform: () => draws.shift() });
    }
    return sampler[request.call.name](...args);
  }
  if (request.trace) {
    const { frames, tokens, pieces } = request.trace;
    return frames.map((frame) => traceCells(frame, tokens, (id) => pieces[id]));
  }
  throw new Error(`unknown request ${JSON.stringify(request)}`);
}

try {
  const result = await answer(JSON.parse(readFileSync(0, "utf-8")));
  process.stdout.write(JSON.stringify({ result }));
} catch (error) {
  process.stdout.write(JSON.stringify({ error: error.message }));
}
