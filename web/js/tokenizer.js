// The page's tokenizer: byte-level vocabularies (ByT5's), as exported in model.json's "tokenizer" entry:
// {kind: "byte", byte_offset, added_tokens: [{id, content, lstrip, rstrip}], pieces: [display text per id]}.
// Text is split at added tokens (the longest match first, whitespace around a token with lstrip / rstrip
// dropped, as transformers does); the rest is UTF-8 bytes, byte b having id b + byte_offset.

const WHITESPACE = /\s/u;

export class ByteTokenizer {
  constructor(table) {
    if (table.kind !== "byte") {
      throw new Error(`the page can only tokenize byte-level vocabularies, not "${table.kind}".`);
    }
    this.offset = table.byte_offset;
    this.added = [...table.added_tokens].sort((a, b) => b.content.length - a.content.length);
    this.byId = new Map(table.added_tokens.map((t) => [t.id, t.content]));
    this.pieces = table.pieces;
    this.encoder = new TextEncoder();
  }

  /** Token ids of `text` (no special tokens added). */
  encode(text) {
    const ids = [];
    let plain = "";
    const flush = () => {
      for (const byte of this.encoder.encode(plain)) ids.push(byte + this.offset);
      plain = "";
    };
    let i = 0;
    while (i < text.length) {
      const token = this.added.find((t) => text.startsWith(t.content, i));
      if (!token) {
        plain += text[i];
        i += 1;
        continue;
      }
      if (token.lstrip) plain = plain.replace(/\s+$/u, "");
      flush();
      ids.push(token.id);
      i += token.content.length;
      if (token.rstrip) while (i < text.length && WHITESPACE.test(text[i])) i += 1;
    }
    flush();
    return ids;
  }

  /** Text of `ids`: bytes decoded as UTF-8 (invalid bytes dropped, as ByT5 does), added tokens by content. */
  decode(ids, { skipSpecial = [] } = {}) {
    let text = "", bytes = [];
    const flush = () => {
      text += new TextDecoder("utf-8").decode(new Uint8Array(bytes)).replaceAll("\uFFFD", "");
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

  /** Display text of one id (a lone byte of a multi-byte character shows as the byte's own name). */
  piece(id) {
    return this.pieces[id] ?? `<${id}>`;
  }
}
