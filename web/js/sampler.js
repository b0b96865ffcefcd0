// The masked-diffusion sampler of diff_trainer/sampling.py for one sequence, in the browser.
//
// The prompt is followed by `gen_length` mask tokens, filled left to right in blocks of `block_length`.
// At each step every position of the current block is predicted at once (argmax at temperature 0, else
// Gumbel-max with a seeded generator) and only the most confident predictions are committed: `steps` spread
// evenly over the blocks and over each block's masks, or (with `threshold`, Fast-dLLM) every prediction at
// least that confident and always the best one.
//
// Tie-breaking, identical to the Python sampler: equal logits -> the lowest token id wins (torch.argmax
// returns the first maximum); equal confidences -> the leftmost position is committed first (a stable
// descending sort). Logits are compared as float64 after the float32 network output, as in Python.
// Never committed: the mask token and every special token except EOS (`forbidden_ids`).

const FLOAT64_MIN = -Number.MAX_VALUE; // torch.finfo(torch.float64).min: "rank_last" keeps EOS finite
const FLOAT64_TINY = 2.2250738585072014e-308; // torch.finfo(torch.float64).tiny
export const EOS_HANDLING = ["none", "stop", "forbid", "rank_last"];

// Confidence strategies: (probabilities, chosen id, rng) -> confidence; higher is committed earlier.
export const CONFIDENCE_STRATEGIES = {
  low_confidence: (probs, chosen) => probs[chosen],
  random: (probs, chosen, rng) => rng.uniform(),
  margin: (probs) => {
    let first = -Infinity, second = -Infinity;
    for (const p of probs) {
      if (p > first) { second = first; first = p; } else if (p > second) second = p;
    }
    return first - second;
  },
  entropy: (probs) => {
    let sum = 0;
    for (const p of probs) sum += p * Math.log(Math.max(p, FLOAT64_TINY));
    return sum;
  },
};

/** The settings with defaults filled in; throws an Error naming the setting that is wrong. */
export function checkSettings(given) {
  const s = {
    gen_length: 64, steps: null, block_length: null, temperature: 0, remasking: "low_confidence",
    threshold: null, guidance_scale: 0, eos_handling: "stop", seed: 0, ...given,
  };
  if (s.steps === null) s.steps = s.gen_length;
  if (s.block_length === null) s.block_length = s.gen_length;
  const positiveInteger = (name) => {
    if (!Number.isInteger(s[name]) || s[name] < 1) throw new Error(`${name} must be a positive integer, not ${s[name]}.`);
  };
  positiveInteger("gen_length");
  positiveInteger("block_length");
  if (s.gen_length % s.block_length) {
    throw new Error(`gen_length (${s.gen_length}) must be a multiple of block_length (${s.block_length}).`);
  }
  s.num_blocks = s.gen_length / s.block_length;
  if (s.threshold === null) {
    positiveInteger("steps");
    if (s.steps % s.num_blocks) {
      throw new Error(`steps (${s.steps}) must be a multiple of the number of blocks (${s.num_blocks}).`);
    }
    s.steps_per_block = s.steps / s.num_blocks;
    if (s.steps_per_block > s.block_length) {
      throw new Error(`${s.steps_per_block} steps per block exceed block_length (${s.block_length}): use at most gen_length steps.`);
    }
  } else if (typeof s.threshold !== "number" || Number.isNaN(s.threshold)) {
    throw new Error(`threshold must be a number, not ${s.threshold}.`);
  }
  if (!(s.remasking in CONFIDENCE_STRATEGIES)) {
    throw new Error(`remasking must be one of ${Object.keys(CONFIDENCE_STRATEGIES).join(", ")}, not ${s.remasking}.`);
  }
  if (s.threshold !== null && s.remasking === "random") {
    throw new Error("threshold decoding needs a confidence; it cannot be combined with remasking 'random'.");
  }
  if (!(s.temperature >= 0)) throw new Error(`temperature must be >= 0, not ${s.temperature}.`);
  if (!(s.guidance_scale >= 0)) throw new Error(`guidance_scale must be >= 0, not ${s.guidance_scale}.`);
  if (!EOS_HANDLING.includes(s.eos_handling)) {
    throw new Error(`eos_handling must be one of ${EOS_HANDLING.join(", ")}, not ${s.eos_handling}.`);
  }
  if (!Number.isInteger(s.seed)) throw new Error(`seed must be an integer, not ${s.seed}.`);
  return s;
}

/** How many masks to commit at each of `steps` steps: n // steps, +1 in the first n % steps. */
export function numTransferTokens(maskedCount, steps) {
  const base = Math.floor(maskedCount / steps);
  return Array.from({ length: steps }, (_, i) => base + (i < maskedCount % steps ? 1 : 0));
}

/** Index of the largest value; the first one on ties (as torch.argmax). */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** softmax in float64 (−Infinity entries get probability 0). */
export function softmax(logits) {
  let max = -Infinity;
  for (const l of logits) if (l > max) max = l;
  const exps = logits.map((l) => Math.exp(l - max));
  let sum = 0;
  for (const e of exps) sum += e;
  return exps.map((e) => e / sum);
}

/** Argmax at temperature 0, else Gumbel-max: argmax(l / T + G) is a draw from softmax(l / T). */
export function sampleToken(logits, temperature, rng) {
  if (temperature === 0) return argmax(logits);
  return argmax(logits.map((l) => l / temperature - Math.log(-Math.log(rng.uniform()))));
}

/** Classifier-free guidance as in LLaDA: un + (w + 1)(cond − un). */
export function guidedLogits(conditional, unconditional, scale) {
  return conditional.map((c, i) => unconditional[i] + (scale + 1) * (c - unconditional[i]));
}

/** Positions of the `count` most confident candidates (ties: the leftmost first). */
export function selectMostConfident(confidence, candidates, count) {
  const order = candidates.slice().sort((a, b) => confidence[b] - confidence[a] || a - b);
  return order.slice(0, count);
}

/** Predicted id and confidence of one position from its logits row (float32 network output). */
function predict(row, s, tokens, rng) {
  const logits = Array.from(row);
  for (const id of tokens.forbidden_ids) logits[id] = -Infinity;
  if (s.eos_handling === "forbid") logits[tokens.eos] = -Infinity;
  const token = sampleToken(logits, s.temperature, rng);
  const probs = softmax(logits);
  let confidence = CONFIDENCE_STRATEGIES[s.remasking](probs, token, rng);
  if (s.eos_handling === "rank_last" && token === tokens.eos) confidence = FLOAT64_MIN;
  return { token, confidence };
}

/**
 * Sample `gen_length` tokens after `promptIds` (and before `suffixIds`, kept fixed: infilling), yielding one frame
 * per denoising step:
 * {step, block, ids, committed (positions), confidence (per committed position), nfe, generationStart,
 * generationEnd (the suffix starts there)}.
 * `model(sequences)` resolves to one Float32Array of logits [T * vocabSize] per sequence.
 * `tokens`: {mask, eos, forbidden_ids, vocab_size, shift}. `rng`: {uniform()} in (0, 1).
 */
export async function* sample(model, promptIds, settings, tokens, rng, suffixIds = []) {
  const s = checkSettings(settings);
  const V = tokens.vocab_size;
  if (tokens.shift && promptIds.length === 0) {
    throw new Error("a shift model predicts each token from the one before it: the prompt needs a token.");
  }
  const x = [...promptIds, ...new Array(s.gen_length).fill(tokens.mask), ...suffixIds];
  const P = promptIds.length, endOfGeneration = P + s.gen_length;
  const guided = s.guidance_scale > 0;
  const offset = tokens.shift ? 1 : 0; // shifted models predict token i from the logits at i - 1
  let step = 0, nfe = 0;
  for (let block = 0; block < s.num_blocks; block++) {
    const start = P + block * s.block_length, end = start + s.block_length;
    const maskedIn = () => x.slice(start, end).flatMap((id, i) => (id === tokens.mask ? [start + i] : []));
    const schedule = s.threshold === null ? numTransferTokens(maskedIn().length, s.steps_per_block) : null;
    let blockStep = 0, masked;
    while ((masked = maskedIn()).length > 0) {
      let logitsOf;
      if (guided) {
        const unconditional = x.map((id, i) => (i < P || i >= endOfGeneration ? tokens.mask : id));
        const [cond, uncond] = await model([x, unconditional]);
        logitsOf = (i) => guidedLogits(cond.subarray(i * V, (i + 1) * V), uncond.subarray(i * V, (i + 1) * V), s.guidance_scale);
        nfe += 2;
      } else {
        const [logits] = await model([x]);
        logitsOf = (i) => logits.subarray(i * V, (i + 1) * V);
        nfe += 1;
      }
      const predictions = {}, confidence = {};
      for (const position of masked) {
        predictions[position] = predict(logitsOf(position - offset), s, tokens, rng);
        confidence[position] = predictions[position].confidence;
      }
      const count = schedule !== null
        ? schedule[blockStep]
        : Math.max(1, masked.filter((p) => confidence[p] >= s.threshold).length);
      const committed = selectMostConfident(confidence, masked, count).sort((a, b) => a - b);
      for (const position of committed) x[position] = predictions[position].token;
      yield {
        step, block, ids: x.slice(), committed, generationStart: P, generationEnd: endOfGeneration, nfe,
        confidence: Object.fromEntries(committed.map((p) => [p, confidence[p]])),
      };
      step += 1;
      blockStep += 1;
    }
    if (s.eos_handling === "stop" && x.slice(start, end).includes(tokens.eos)) {
      x.fill(tokens.eos, end, endOfGeneration); // never the suffix
      if (end < endOfGeneration) {
        yield { step, block, ids: x.slice(), committed: [], generationStart: P, generationEnd: endOfGeneration, nfe,
          confidence: {}, filled: true };
      }
      break;
    }
  }
}
