// The page's tokenizers, built from model.json's "tokenizer" entry (written by diff-export-onnx):
//   {kind: "byte", byte_offset, ...}: byte-level vocabularies (ByT5's), byte b having id b + byte_offset;
//   {kind: "bpe", vocab, merges, ignore_merges, pattern, byte_chars, ...}: byte-level BPE (GPT-2's scheme, as
//   `tokenizers` runs it);
// both with added_tokens: [{id, content, lstrip, rstrip}] and pieces: [display text per id].
// Text is first split at added tokens (the longest match first, whitespace around a token with lstrip / rstrip
// dropped, as transformers does); the rest is encoded by the kind's own rule.

const WHITESPACE = /\s/u;
const UTF8 = new TextEncoder();

/** The tokenizer for a model.json "tokenizer" entry; an unknown kind is an error naming the kinds supported. */
export function makeTokenizer(table) {
  if (table.kind === "byte") return new ByteTokenizer(table);
  if (table.kind === "bpe") return new BpeTokenizer(table);
  throw new Error(`the page can only tokenize byte-level vocabularies ("byte") and byte-level BPE ("bpe"), `
    + `not "${table.kind}".`);
}

/** `text` cut at added tokens: plain strings and added-token ids, in order. */
function splitAtAddedTokens(text, added) {
  const parts = [];
  let plain = "";
  let i = 0;
  while (i < text.length) {
    const token = added.find((t) => text.startsWith(t.content, i));
    if (!token) {
      plain += text[i];
      i += 1;
      continue;
    }
    if (token.lstrip) plain = plain.replace(/\s+$/u, "");
    if (plain) parts.push(plain);
    plain = "";
    parts.push(token.id);
    i += token.content.length;
    if (token.rstrip) while (i < text.length && WHITESPACE.test(text[i])) i += 1;
  }
  if (plain) parts.push(plain);
  return parts;
}

class AddedTokens {
  constructor(table) {
    this.added = [...table.added_tokens].sort((a, b) => b.content.length - a.content.length);
    this.byId = new Map(table.added_tokens.map((t) => [t.id, t.content]));
    this.pieces = table.pieces;
  }

  /** Token ids of `text` (no special tokens added); plain text goes through `this.encodePlain`. */
  encode(text) {
    const parts = splitAtAddedTokens(text, this.added);
    return parts.flatMap((part) => (typeof part === "number" ? [part] : this.encodePlain(part)));
  }

  /** Display text of one id (a lone byte of a multi-byte character shows as the Python view shows it). */
  piece(id) {
    return this.pieces[id] ?? `<${id}>`;
  }
}

export class ByteTokenizer extends AddedTokens {
  constructor(table) {
    super(table);
    this.offset = table.byte_offset;
  }

  encodePlain(text) {
    return Array.from(UTF8.encode(text), (byte) => byte + this.offset);
  }

  /** Text of `ids`: bytes decoded as UTF-8 (invalid bytes dropped, as ByT5 does), added tokens by content. */
  decode(ids, { skipSpecial = [] } = {}) {
    let text = "", bytes = [];
    const flush = () => {
      text += new TextDecoder("utf-8", { ignoreBOM: true }).decode(new Uint8Array(bytes)).replaceAll("\uFFFD", "");
      bytes = [];
    };
    for (const id of ids) {
      if (this.byId.has(id)) {
        flush();
        if (!skipSpecial.includes(id)) text += this.byId.get(id);
      } else if (id >= this.offset && id < this.offset + 256) {
        bytes.push(id - this.offset);
      }
    }
    flush();
    return text;
  }
}

export class BpeTokenizer extends AddedTokens {
  constructor(table) {
    super(table);
    this.vocab = new Map(Object.entries(table.vocab));
    this.tokenById = new Map([...this.vocab].map(([token, id]) => [id, token]));
    for (const [id, content] of this.byId) this.tokenById.set(id, content);
    // a merge's rank is its line in the merges list: the lowest rank present in a word is applied first
    this.ranks = new Map(table.merges.map(([left, right], rank) => [`${left} ${right}`, rank]));
    this.ignoreMerges = table.ignore_merges;
    this.pattern = new RegExp(table.pattern, "gu");
    this.byteChars = [...table.byte_chars];
    this.charBytes = new Map(this.byteChars.map((char, byte) => [char, byte]));
  }

  /** Pre-tokenize with GPT-2's split, spell each word's UTF-8 bytes in the byte alphabet, apply the merges. */
  encodePlain(text) {
    return (text.match(this.pattern) ?? []).flatMap((word) => {
      const spelled = Array.from(UTF8.encode(word), (byte) => this.byteChars[byte]).join("");
      if (this.ignoreMerges && this.vocab.has(spelled)) return [this.vocab.get(spelled)];
      return this.merge([...spelled]).map((symbol) => this.vocab.get(symbol));
    });
  }

  /** BPE on one word: merge every occurrence (left to right) of the lowest-ranked adjacent pair, until none. */
  merge(symbols) {
    for (;;) {
      let best = Infinity, left = null, right = null;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (rank !== undefined && rank < best) [best, left, right] = [rank, symbols[i], symbols[i + 1]];
      }
      if (left === null) return symbols;
      const merged = [];
      for (let i = 0; i < symbols.length; i++) {
        if (symbols[i] === left && symbols[i + 1] === right) {
          merged.push(left + right);
          i += 1;
        } else {
          merged.push(symbols[i]);
        }
      }
      symbols = merged;
    }
  }

  /** Text of `ids` as `tokenizers`' ByteLevel decoder makes it: each token's bytes (its characters through the
   *  byte alphabet, or its own UTF-8 when one is outside it), all decoded at once with U+FFFD for invalid UTF-8. */
  decode(ids, { skipSpecial = [] } = {}) {
    const bytes = [];
    for (const id of ids) {
      const token = this.tokenById.get(id);
      if (token === undefined || skipSpecial.includes(id)) continue;
      const chars = [...token];
      if (chars.every((char) => this.charBytes.has(char))) bytes.push(...chars.map((char) => this.charBytes.get(char)));
      else bytes.push(...UTF8.encode(token));
    }
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(new Uint8Array(bytes));
  }
}
