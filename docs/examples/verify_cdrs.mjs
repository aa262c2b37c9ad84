// Verify the signatures and the hash chain of switchboard call records, without switchboard.
//
//   node docs/examples/verify_cdrs.mjs cdrs.jsonl cdr-public-key.pem
//
// cdrs.jsonl: records in cursor order, one JSON object per line (switchboard cdr export, or the
// records of GET /v1/cdrs pages). cdr-public-key.pem: public_key_pem of GET /v1/cdrs/public-key.
// The algorithm is described in docs/topics/records.md ("Verifying in another language").
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const GENESIS = "0".repeat(64);
const FLOATS = new Set(["duration_seconds", "participant_seconds", "first_use", "last_use"]);

// Characters above "~" are written as \uXXXX escapes, as the relay writes them.
const ascii = (json) =>
  json.replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));

// Sorted keys, no whitespace; the float fields keep their decimal point (5.0, not 5).
function canonical(value, key) {
  if (Array.isArray(value)) return "[" + value.map((v) => canonical(v)).join(",") + "]";
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return "{" + keys.map((k) => ascii(JSON.stringify(k)) + ":" + canonical(value[k], k)).join(",") + "}";
  }
  if (typeof value === "number" && FLOATS.has(key) && Number.isInteger(value)) {
    return value.toFixed(1);
  }
  return ascii(JSON.stringify(value));
}

const [file, pemFile] = process.argv.slice(2);
const publicKey = createPublicKey(readFileSync(pemFile));
const lines = readFileSync(file, "utf8").split("\n").filter((line) => line.trim());
let previous = null; // chain_hash of the record before
lines.forEach((line, i) => {
  const { signature, cursor, ...body } = JSON.parse(line);
  const bytes = Buffer.from(canonical(body));
  if (!verify(null, bytes, publicKey, Buffer.from(signature, "base64"))) {
    console.log(`BAD record ${body.record_id} (line ${i + 1}): signature does not match`);
    process.exit(1);
  }
  if (previous !== null && body.prev_hash !== previous) {
    console.log(`BAD record ${body.record_id} (line ${i + 1}): prev_hash does not match`);
    process.exit(1);
  }
  previous = createHash("sha256").update(bytes).update(signature).digest("hex");
});
const start = lines.length && JSON.parse(lines[0]).prev_hash !== GENESIS ? " (continues an earlier chain)" : "";
console.log(`OK ${lines.length} records${start}; last chain_hash ${previous}`);
