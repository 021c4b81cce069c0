// Runs the explorer's light client over cases written by the Python tests (a JSON file: argv[2])
// and prints one JSON line per case: {"name", "ok", "step", "error", "value"}. The Python side
// decides what each case must give; this only reports what the browser code concludes.
import { readFileSync } from "node:fs";
import {
  VerifyError,
  base64ToBytes,
  bytesToHex,
  hexToBytes,
  validatorsFromRpc,
  verifySignedHeader,
  verifyStateProof,
} from "../src/lightclient.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const c of cases) {
  const out = { name: c.name, ok: false, step: null, error: null, value: null };
  try {
    let root = c.root ? hexToBytes(c.root) : null;
    if (c.signed_header) root = verifySignedHeader(c.signed_header, validatorsFromRpc(c.validators), c.chain_id);
    if (c.key !== undefined) {
      const shown = verifyStateProof(root, hexToBytes(c.key), base64ToBytes(c.proof));
      out.value = bytesToHex(shown);
    } else {
      out.value = bytesToHex(root);
    }
    out.ok = true;
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    out.step = err.step;
    out.error = err.message;
  }
  console.log(JSON.stringify(out));
}
