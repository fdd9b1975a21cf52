/** The llama2.c tokenizer format (SentencePiece BPE pieces with scores, byte fallback). */
import { readFileSync } from 'node:fs';

export const BOS = 1;
export const EOS = 2;

export class Tokenizer {
  private readonly pieces: Buffer[] = [];
  private readonly scores: number[] = [];
  private readonly ids = new Map<string, number>(); // piece bytes (latin1) -> first id

  constructor(path: string, vocab: number) {
    const bytes = readFileSync(path);
    let offset = 4; // max token length, unused
    for (let id = 0; id < vocab; id++) {
      this.scores.push(bytes.readFloatLE(offset));
      const length = bytes.readInt32LE(offset + 4);
      const piece = bytes.subarray(offset + 8, offset + 8 + length);
      this.pieces.push(piece);
      const key = piece.toString('latin1');
      if (!this.ids.has(key)) this.ids.set(key, id);
      offset += 8 + length;
    }
  }

  /** BOS, a dummy-prefix space, one piece per character (byte fallback), then best-score merges. */
  encode(text: string): number[] {
    const ids = [BOS];
    if (text.length > 0) ids.push(this.ids.get(' ')!);
    for (const ch of text) {
      const utf8 = Buffer.from(ch, 'utf8');
      const id = this.ids.get(utf8.toString('latin1'));
      if (id !== undefined) ids.push(id);
      else for (const byte of utf8) ids.push(byte + 3);
    }
    for (;;) {
      let best = -Infinity, at = -1, merged = -1;
      for (let i = 1; i < ids.length - 1; i++) {
        const id = this.ids.get(this.pieces[ids[i]!]!.toString('latin1') + this.pieces[ids[i + 1]!]!.toString('latin1'));
        if (id !== undefined && this.scores[id]! > best) {
          best = this.scores[id]!;
          at = i;
          merged = id;
        }
      }
      if (at < 0) return ids;
      ids.splice(at, 2, merged);
    }
  }

  decode(ids: number[]): string {
    const out: Buffer[] = [];
    let previous = BOS;
    for (const id of ids) {
      if (id === BOS || id === EOS) {
        previous = id;
        continue;
      }
      let piece = this.pieces[id]!;
      if (previous === BOS && piece[0] === 0x20) piece = piece.subarray(1);
      const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece.toString('latin1'));
      out.push(byte ? Buffer.from([parseInt(byte[1]!, 16)]) : piece);
      previous = id;
    }
    return Buffer.concat(out).toString('utf8');
  }
}
