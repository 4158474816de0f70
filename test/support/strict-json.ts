/**
 * A JSON parser that refuses what JSON.parse silently accepts: an object
 * with the same key twice (JSON.parse keeps the last). For log lines: pino
 * writes a key twice when a call's own object repeats one of the logger's
 * bindings, and a log shipper then keeps one value or the other.
 *
 * Strict RFC 8259 grammar; throws `SyntaxError` naming the offset and, for a
 * duplicate, the key and its object's path.
 */
const LITERAL = /true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

export function parseStrictJson(text: string): unknown {
  let i = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at offset ${i}`);
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i]!)) i++;
  };
  const expect = (ch: string) => {
    if (text[i] !== ch) fail(`expected ${JSON.stringify(ch)}`);
    i++;
  };

  const string = (): string => {
    const start = i;
    expect('"');
    for (;;) {
      const c = text[i];
      if (c === undefined) fail("unterminated string");
      if (c === '"') break;
      if (c! < " ") fail("control character in string");
      if (c === "\\") {
        const e = text[i + 1];
        if (e === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail("bad \\u escape");
          i += 6;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else fail("bad escape");
      } else i++;
    }
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };

  const value = (path: string): unknown => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out: Record<string, unknown> = {};
      const seen = new Set<string>();
      ws();
      if (text[i] === "}") {
        i++;
        return out;
      }
      for (;;) {
        ws();
        const key = string();
        if (seen.has(key)) fail(`duplicate key ${JSON.stringify(key)} in ${path || "(root)"}`);
        seen.add(key);
        ws();
        expect(":");
        out[key] = value(`${path}.${key}`);
        ws();
        if (text[i] === ",") i++;
        else {
          expect("}");
          return out;
        }
      }
    }
    if (c === "[") {
      i++;
      const out: unknown[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return out;
      }
      for (;;) {
        out.push(value(`${path}[${out.length}]`));
        ws();
        if (text[i] === ",") i++;
        else {
          expect("]");
          return out;
        }
      }
    }
    if (c === '"') return string();
    LITERAL.lastIndex = i;
    const lit = LITERAL.exec(text);
    if (!lit) return fail("unexpected token");
    i += lit[0].length;
    return JSON.parse(lit[0]) as unknown;
  };

  const out = value("");
  ws();
  if (i !== text.length) fail("trailing text");
  return out;
}
