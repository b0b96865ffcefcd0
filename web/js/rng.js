// A small seeded generator for the page's random choices (Gumbel noise, random remasking).
// mulberry32 (Tommy Ettinger's 32-bit generator) gives 32-bit words; two words make one float64 in (0, 1)
// with 53 random bits, as numpy forms doubles. Runs are repeatable per seed in every browser; they are not
// the draws of torch's generator, so sampled (temperature > 0) text differs from diff-generate's.

export class Mulberry32 {
  constructor(seed) {
    this.state = seed >>> 0;
  }

  nextUint32() {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float64 uniform in (0, 1): 53 bits from two words, never exactly 0 (log(0) would be infinite). */
  uniform() {
    for (;;) {
      const high = this.nextUint32() >>> 5, low = this.nextUint32() >>> 6;
      const value = (high * 67108864 + low) / 9007199254740992;
      if (value > 0) return value;
    }
  }
}
