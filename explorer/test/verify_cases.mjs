// Runs the explorer's light client over cases written by the Python tests (a JSON file: argv[2])
// and prints one JSON line per case: {"name", "ok", "step", "error", "value"}. The Python side
// decides what each case must give; this only reports what the browser code concludes.
import { readFileSync } from "node:fs";
import {
  LightClient,
  VerifyError,
  base64ToBytes,
  bytesToHex,
  hexToBytes,
  validatorsFromRpc,
  verifySignedHeader,
  verifyStateProof,
} from "../src/lightclient.js";

// A light case: {"light": {"chain_id", "anchor", "target", "now", "trusting_period", "blocks": {h: block}}},
// each block {"signed_header", "validators", "next_validators"} (RPC shapes); the value is the
// target header's app hash as the light client verified it.
const lightBlock = (b) => ({
  signedHeader: b.signed_header,
  validators: validatorsFromRpc(b.validators),
  nextValidators: validatorsFromRpc(b.next_validators),
});

async function lightAppHash(l) {
  const fetched = [];
  const fetch = async (height) => {
    fetched.push(height);
    const b = l.blocks[String(height)];
    if (!b) throw new VerifyError("rpc", `no header ${height}`);
    return lightBlock(b);
  };
  const client = new LightClient(l.chain_id, lightBlock(l.blocks[String(l.anchor)]), fetch, l.trusting_period, () => l.now);
  for (const height of l.before || []) await client.verified(height);
  const block = await client.verified(l.target);
  return hexToBytes(block.signedHeader.header.app_hash);
}

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const c of cases) {
  const out = { name: c.name, ok: false, step: null, error: null, value: null };
  try {
    let root = c.root ? hexToBytes(c.root) : null;
    if (c.light) root = await lightAppHash(c.light);
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
