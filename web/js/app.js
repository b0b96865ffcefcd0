// The demo page: load an export, take a prompt and settings, show the denoising live.
// The export directory is `?model=URL` (default: model/ next to the page).

import { loadExport } from "./model.js";
import { Mulberry32 } from "./rng.js";
import { checkSettings, sample } from "./sampler.js";
import { traceCells } from "./trace.js";

const $ = (id) => document.getElementById(id);
const NUMBER_FIELDS = ["gen_length", "steps", "block_length", "temperature", "guidance_scale", "seed"];
const CHOICE_FIELDS = ["remasking", "eos_handling"];
const TOKENIZER_KINDS = { byte: "byte-level", bpe: "byte-level BPE" };

let demo = null; // the loaded export
let frames = [];
let stopRequested = false;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  document.body.dataset.state = "error";
}

function fillForm(config) {
  const sampler = config.sampler;
  for (const name of [...NUMBER_FIELDS, ...CHOICE_FIELDS]) $(name).value = sampler[name] ?? "";
  $("threshold").value = sampler.threshold ?? "";
  $("prompt").value = config.prompt.text;
  $("append_dff").checked = config.prompt.append_dff;
  $("dff-name").textContent = config.prompt.dff_token ?? "<DFF>";
  $("append_dff").disabled = config.prompt.dff_token === null;
}

function readSettings() {
  const settings = {};
  for (const name of NUMBER_FIELDS) settings[name] = Number($(name).value);
  for (const name of CHOICE_FIELDS) settings[name] = $(name).value;
  settings.threshold = $("threshold").value === "" ? null : Number($("threshold").value);
  return checkSettings(settings);
}

function promptIds() {
  const { config, tokenizer, tokens } = demo;
  let text = $("prompt").value;
  const dff = config.prompt.dff_token;
  if ($("append_dff").checked && dff && !text.endsWith(dff)) text += dff;
  const ids = tokenizer.encode(text);
  return tokens.bos === null ? ids : [tokens.bos, ...ids];
}

function suffixIds() {
  const text = $("suffix").value;
  return text === "" ? [] : demo.tokenizer.encode(text);
}

function render(frame) {
  const spans = traceCells(frame, demo.tokens, (id) => demo.tokenizer.piece(id)).map(({ text, kind, fresh }) => {
    const span = document.createElement("span");
    span.className = [kind === "token" ? "" : kind, fresh ? "new" : ""].join(" ").trim();
    span.textContent = text;
    return span;
  });
  $("sequence").replaceChildren(...spans);
}

function completionIds(frame) {
  const generated = frame.ids.slice(frame.generationStart, frame.generationEnd);
  const end = generated.indexOf(demo.tokens.eos);
  return end === -1 ? generated : generated.slice(0, end);
}

async function generate(event) {
  event.preventDefault();
  $("error").hidden = true;
  let settings, ids, suffix;
  try {
    settings = readSettings();
    ids = promptIds();
    suffix = suffixIds();
    if (ids.length + settings.gen_length + suffix.length > demo.config.max_length) {
      throw new Error(`the prompt (${ids.length} tokens) + ${settings.gen_length} tokens + the suffix `
        + `(${suffix.length} tokens) exceed the export's max_length of ${demo.config.max_length}.`);
    }
  } catch (error) {
    showError(error.message);
    return;
  }
  document.body.dataset.state = "running";
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("replay").disabled = true;
  stopRequested = false;
  frames = [];
  const rng = new Mulberry32(settings.seed);
  const began = performance.now();
  let committedCount = 0, last = null;
  try {
    for await (const frame of sample(demo.run, ids, settings, demo.tokens, rng, suffix)) {
      frames.push(frame);
      last = frame;
      if (!frame.filled) committedCount += frame.committed.length;
      const seconds = (performance.now() - began) / 1000;
      const total = settings.threshold === null ? `/${settings.steps}` : "";
      $("progress").textContent = `step ${frame.step + (frame.filled ? 0 : 1)}${total} · block ${frame.block + 1} · `
        + `${frame.nfe} forward passes · ${(committedCount / seconds).toFixed(1)} tokens/s`;
      render(frame);
      await new Promise((resolve) => requestAnimationFrame(resolve)); // let the page paint this step
      if (stopRequested) break;
    }
  } catch (error) {
    showError(`sampling failed: ${error.message ?? error}`);
    return;
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
  const generated = completionIds(last);
  const special = [demo.tokens.eos, ...demo.tokens.forbidden_ids];
  $("completion").textContent = demo.tokenizer.decode(generated, { skipSpecial: special });
  $("completion").dataset.ids = JSON.stringify(last.ids.slice(last.generationStart, last.generationEnd));
  $("replay").max = String(frames.length - 1);
  $("replay").value = String(frames.length - 1);
  $("replay").disabled = false;
  document.body.dataset.state = stopRequested ? "stopped" : "done";
}

async function main() {
  const base = new URL(new URLSearchParams(location.search).get("model") ?? "model/", location.href);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  try {
    demo = await loadExport(base);
  } catch (error) {
    showError(`Could not load the model: ${error.message ?? error}`);
    $("model-info").textContent = `No model loaded from ${base.href}.`;
    return;
  }
  const { config } = demo;
  const megabytes = (config.files["model.onnx"] / 2 ** 20).toFixed(1);
  $("model-info").textContent = `${config.model_type} · ${config.tokens.vocab_size} tokens `
    + `(${TOKENIZER_KINDS[config.tokenizer.kind]}) · `
    + `${megabytes} MB ONNX (${config.quantization === "none" ? "float32" : config.quantization}) · `
    + `context ${config.max_length} · from ${base.href}`;
  fillForm(config);
  $("controls").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => { stopRequested = true; });
  $("replay").addEventListener("input", () => render(frames[Number($("replay").value)]));
  $("generate").disabled = false;
  document.body.dataset.state = "ready";
}

main();
