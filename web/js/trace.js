// How one frame of the denoising trace is drawn: a cell {text, kind, fresh} per position.
//
// kind: "prompt" (the prompt and a fixed suffix), "masked" (MASK_GLYPH), "token", "end" (the first EOS of the
// generated span: where the completion ends) or "pad" (every committed position after it: EOS padding is drawn as
// PAD_GLYPH, any other token keeps its text; none of it is part of the completion). Masked positions after the first
// EOS stay masked: they are still being denoised. `fresh`: committed in this step.

export const MASK_GLYPH = "░";
export const PAD_GLYPH = "·";

/** The cells of `frame` (a frame of sampler.js's `sample`); `piece(id)` is a token's display text. */
export function traceCells(frame, tokens, piece) {
  const committed = new Set(frame.committed);
  let ended = false;
  return frame.ids.map((id, position) => {
    const fresh = committed.has(position);
    if (position < frame.generationStart || position >= frame.generationEnd) {
      return { text: piece(id), kind: "prompt", fresh: false };
    }
    if (id === tokens.mask) return { text: MASK_GLYPH, kind: "masked", fresh };
    if (ended) return { text: id === tokens.eos ? PAD_GLYPH : piece(id), kind: "pad", fresh };
    if (id === tokens.eos) {
      ended = true;
      return { text: piece(id), kind: "end", fresh };
    }
    return { text: piece(id), kind: "token", fresh };
  });
}
