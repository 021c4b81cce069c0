// Reading the chain from the page: JSON-RPC through the explorer's pass-through (untrusted), and
// proven reads checked here with the light client, from the trusted validator set on.

import {
  LightClient,
  VerifyError,
  hashHeader,
  base64ToBytes,
  bytesToHex,
  equal,
  hexToBytes,
  validatorSetHash,
  validatorsFromRpc,
  verifyStateProof,
} from "./lightclient.js";

export class NotFound extends Error {}

let config = null;

export async function loadConfig() {
  if (!config) config = await (await fetch("/config.json")).json();
  return config;
}

let nextId = 1;

export async function rpc(method, params = {}) {
  const response = await fetch("/rpc", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: nextId++, method, params }),
  });
  const doc = await response.json();
  if (doc.error) throw new Error(`${method}: ${doc.error.message || JSON.stringify(doc.error)} ${doc.error.data || ""}`);
  return doc.result;
}

const hexOf = (text) => bytesToHex(new TextEncoder().encode(text));

async function abciQuery(path, data, { prove = false, height = 0 } = {}) {
  const result = await rpc("abci_query", { path, data: hexOf(data), height: String(height), prove });
  const response = result.response;
  if (Number(response.code || 0) !== 0) {
    if (Number(response.code) === 14) throw new NotFound(response.log);
    throw new Error(`${path}: ${response.log}`);
  }
  return response;
}

export async function query(path, data = "", height = 0) {
  const response = await abciQuery(path, data, { height });
  return JSON.parse(new TextDecoder().decode(base64ToBytes(response.value)));
}

const PROOF_OP_TYPE = "haca:mpt";

// The trusted validator set comes with the page's config; this browser pins its hash per chain on
// first use, so a server that later swaps in a set of its own (and headers it signs) is caught.
function pinTrustedSet(chainId, validators) {
  const hash = bytesToHex(validatorSetHash(validators));
  const slot = `haca-explorer/trusted-set/${chainId}`;
  const pinned = window.localStorage.getItem(slot);
  if (pinned === null) {
    window.localStorage.setItem(slot, hash);
    return `${hash.slice(0, 16)}… pinned in this browser now (first use)`;
  }
  if (pinned !== hash) {
    throw new VerifyError("trusted set", `the server's validator set ${hash.slice(0, 16)}… is not the one pinned here, ${pinned.slice(0, 16)}…`);
  }
  return `${hash.slice(0, 16)}… as pinned in this browser`;
}

// Headers are verified by a light client anchored where the trusted (genesis) set signs — else at
// header 1 — that follows the validator set as it changes (explorer/src/lightclient.js).
const TRUSTING_PERIOD = 7 * 24 * 3600; // seconds, when the config names none (as the Python client)
let lightClient = null;
const knownSets = new Map(); // validators_hash (hex) -> the set

async function validatorSet(height, expectedHash) {
  const known = knownSets.get(expectedHash.toLowerCase());
  if (known) return known;
  const result = await rpc("validators", { height: String(height), per_page: "100" });
  const set = validatorsFromRpc(result.validators);
  knownSets.set(bytesToHex(validatorSetHash(set)), set);
  return set;
}

async function lightBlockOf(signedHeader) {
  const { header } = signedHeader;
  const height = Number(header.height);
  return {
    signedHeader,
    validators: await validatorSet(height, header.validators_hash),
    nextValidators: await validatorSet(height + 1, header.next_validators_hash),
  };
}

const fetchLightBlock = async (height) => lightBlockOf((await rpc("commit", { height: String(height) })).signed_header);

// Anchored at the configured trust height and hash, else at header 1 signed by the trusted
// (genesis) set — never at a header the RPC offers as its latest.
async function verifiedAppHash(cfg, trusted, signedHeader) {
  const block = await lightBlockOf(signedHeader);
  if (!lightClient) {
    const trustedHash = bytesToHex(validatorSetHash(trusted));
    knownSets.set(trustedHash, trusted);
    const height = cfg.trust_height || 1;
    const anchor = await fetchLightBlock(height);
    if (Number(anchor.signedHeader.header.height) !== height) {
      throw new VerifyError("light client", `asked for header ${height}, got ${anchor.signedHeader.header.height}`);
    }
    if (cfg.trust_height) {
      const hash = bytesToHex(hashHeader(anchor.signedHeader.header));
      if (hash !== String(cfg.trust_hash).toLowerCase().replace(/^0x/, "")) {
        throw new VerifyError("light client", `header ${height} does not hash to the configured trust hash`);
      }
    } else if (anchor.signedHeader.header.validators_hash.toLowerCase() !== trustedHash) {
      throw new VerifyError("validator set", "header 1 is not signed by the trusted set");
    }
    const period = cfg.trusting_period || TRUSTING_PERIOD;
    lightClient = new LightClient(cfg.chain_id, anchor, fetchLightBlock, period, () => Date.now() / 1000);
  }
  const verified = await lightClient.verify(block);
  return hexToBytes(verified.signedHeader.header.app_hash);
}

// A proven read of the one state key `key` (bytes): the answer, and each step of its check. Never
// throws for a failed check: the result says which step failed, so the page can show it (a
// NotFound is thrown: nothing to check).
export async function provenQuery(path, data, key) {
  const steps = [];
  const step = (name, ok, detail = "") => steps.push({ name, ok, detail });
  let answer = null;
  try {
    const cfg = await loadConfig();
    const trusted = validatorsFromRpc(cfg.validators);
    step("trusted validator set", true, pinTrustedSet(cfg.chain_id, trusted));
    const response = await abciQuery(path, data, { prove: true });
    answer = JSON.parse(new TextDecoder().decode(base64ToBytes(response.value)));
    const ops = (response.proofOps && response.proofOps.ops) || [];
    if (ops.length !== 1) throw new VerifyError("proof", `one state proof expected, the answer carries ${ops.length}`);
    const [op] = ops;
    if (op.type !== PROOF_OP_TYPE) throw new VerifyError("proof", `a proof of type ${op.type}, not ${PROOF_OP_TYPE}`);
    if (!equal(base64ToBytes(op.key), key)) throw new VerifyError("proof", "the proof is for another state key");
    const height = Number(response.height);
    step("answer with a state proof of its key", true, `at height ${height}`);
    const commit = await waitCommit(height + 1);
    if (Number(commit.signed_header.header.height) !== height + 1) {
      throw new VerifyError("header height", `asked for the header at ${height + 1}, got ${commit.signed_header.header.height}`);
    }
    const appHash = await verifiedAppHash(cfg, trusted, commit.signed_header);
    step("header verified from the trusted validators (light client)", true, `height ${height + 1}`);
    const shown = verifyStateProof(appHash, key, base64ToBytes(op.data));
    step("Merkle-Patricia proof against the app hash", true, bytesToHex(appHash).slice(0, 16) + "…");
    if (!equal(shown, base64ToBytes(response.value))) {
      throw new VerifyError("answer", "the answer is not the value the proof shows");
    }
    step("answer equals the proven value", true);
    return { answer, steps, verified: true };
  } catch (err) {
    if (err instanceof NotFound) throw err; // nothing to check: the caller says "not found"
    const name = err instanceof VerifyError ? err.step : "query";
    const reason = err instanceof VerifyError ? err.reason : err.message;
    step(name, false, reason);
    return { answer, steps, verified: false, failed: name, error: reason };
  }
}

// A proven read of every state key the answer carries a proof for, all against one app hash (that
// of a header the light client verified from the trusted validators): the answer as sent (untrusted),
// the proven values (a Map: hex of a state key -> its value, empty where the proof shows it absent)
// and the height. Throws a VerifyError naming the step that failed (a NotFound: nothing to check).
export async function provenValues(path, data) {
  const cfg = await loadConfig();
  const trusted = validatorsFromRpc(cfg.validators);
  pinTrustedSet(cfg.chain_id, trusted);
  const response = await abciQuery(path, data, { prove: true });
  let answer;
  try {
    answer = JSON.parse(new TextDecoder().decode(base64ToBytes(response.value)));
  } catch {
    throw new VerifyError("input", `${path}: the answer is not JSON`);
  }
  const ops = (response.proofOps && response.proofOps.ops) || [];
  if (!ops.length) throw new VerifyError("proof", `${path}: the answer carries no state proof`);
  const height = Number(response.height);
  const commit = await waitCommit(height + 1);
  if (Number(commit.signed_header.header.height) !== height + 1) {
    throw new VerifyError("header height", `asked for the header at ${height + 1}, got ${commit.signed_header.header.height}`);
  }
  const appHash = await verifiedAppHash(cfg, trusted, commit.signed_header);
  const values = new Map();
  for (const op of ops) {
    if (op.type !== PROOF_OP_TYPE) throw new VerifyError("proof", `a proof of type ${op.type}, not ${PROOF_OP_TYPE}`);
    const key = base64ToBytes(op.key);
    values.set(bytesToHex(key), verifyStateProof(appHash, key, base64ToBytes(op.data)));
  }
  return { answer, values, height };
}

async function waitCommit(height, tries = 40) {
  for (let i = 0; ; i++) {
    try {
      return await rpc("commit", { height: String(height) });
    } catch (err) {
      if (i >= tries) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

export async function head() {
  const status = await rpc("status");
  return Number(status.sync_info.latest_block_height);
}

// A tx by its hash (64 hex, with or without 0x): JSON-RPC takes the hash bytes as base64.
export async function txByHash(hash) {
  const bytes = hexToBytes(hash);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  try {
    return await rpc("tx", { hash: btoa(binary), prove: false });
  } catch (err) {
    if (/not found/i.test(err.message)) throw new NotFound(`no tx ${hash}`);
    throw err;
  }
}

export function decodeTx(b64) {
  try {
    return JSON.parse(new TextDecoder().decode(base64ToBytes(b64)));
  } catch {
    return null;
  }
}

export function eventAttrs(event) {
  const out = {};
  for (const a of event.attributes || []) out[a.key] = a.value;
  return out;
}
