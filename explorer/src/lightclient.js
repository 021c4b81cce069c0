// The explorer's light client: what lets the page trust an app hash, and through it a state proof,
// without trusting the server or the RPC node that served them. The same checks as
// haca/client/light.py and haca/crypto/state_proof.py:
//   1. the header is for this chain, and its validators_hash is the trusted set's;
//   2. the header hashes (CometBFT's Header.Hash(): an RFC 6962 tree of proto-encoded fields) to the
//      block id the commit signs;
//   3. precommits (ed25519 over canonical vote sign bytes) of more than 2/3 of the trusted power;
//   4. the Merkle-Patricia proof (Ethereum trie, keccak-256 nodes) leads from that app hash to the
//      key and shows the value.
// Every failure is a VerifyError naming the step, so the page can say exactly what did not hold.
// LightClient (below) follows the validator set from the trusted one as it changes.

import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { keccak_256 } from "@noble/hashes/sha3.js";

export class VerifyError extends Error {
  constructor(step, message) {
    super(`${step}: ${message}`);
    this.step = step;
    this.reason = message; // without the step's name
  }
}

// --- bytes -----------------------------------------------------------------------------------

export function hexToBytes(hex) {
  const clean = hex.startsWith("0x") ? hex.slice(2) : hex;
  if (clean.length % 2 || /[^0-9a-fA-F]/.test(clean)) throw new VerifyError("input", `not hex: ${hex.slice(0, 20)}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function base64ToBytes(text) {
  const raw = atob(text || "");
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

const utf8 = (text) => new TextEncoder().encode(text);

// --- protobuf (just what the signed structures need) ---------------------------------------------

function uvarint(value) {
  let v = BigInt(value);
  const out = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v) byte |= 0x80;
    out.push(byte);
  } while (v);
  return Uint8Array.from(out);
}

const key = (field, wire) => uvarint((field << 3) | wire);
const varintField = (field, value) => (BigInt(value) === 0n ? new Uint8Array() : concat(key(field, 0), uvarint(value)));
const bytesField = (field, data) => (data.length ? concat(key(field, 2), uvarint(data.length), data) : new Uint8Array());
const messageField = (field, body) => concat(key(field, 2), uvarint(body.length), body); // present even when empty

function sfixed64Field(field, value) {
  if (BigInt(value) === 0n) return new Uint8Array();
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigInt64(0, BigInt(value), true);
  return concat(key(field, 1), out);
}

export function parseRfc3339(text) {
  const match = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$/.exec(text);
  if (!match) throw new VerifyError("input", `not an RFC 3339 UTC time: ${text}`);
  const seconds = BigInt(Date.parse(match[1] + "Z") / 1000);
  const nanos = Number((match[2] || "0").padEnd(9, "0"));
  return { seconds, nanos };
}

function timestamp(text) {
  const { seconds, nanos } = parseRfc3339(text);
  return concat(varintField(1, seconds), varintField(2, nanos));
}

function blockId(id) {
  const parts = concat(varintField(1, id.parts.total), bytesField(2, hexToBytes(id.parts.hash)));
  return concat(bytesField(1, hexToBytes(id.hash)), messageField(2, parts));
}

// --- RFC 6962 Merkle tree (CometBFT's merkle.HashFromByteSlices) ------------------------------

export function merkleRoot(items) {
  if (items.length === 0) return sha256(new Uint8Array());
  if (items.length === 1) return sha256(concat(Uint8Array.of(0), items[0]));
  const split = 2 ** Math.floor(Math.log2(items.length - 1));
  return sha256(concat(Uint8Array.of(1), merkleRoot(items.slice(0, split)), merkleRoot(items.slice(split))));
}

// --- headers, validator sets, commits ----------------------------------------------------------

const HASH_FIELDS = [
  "last_commit_hash",
  "data_hash",
  "validators_hash",
  "next_validators_hash",
  "consensus_hash",
  "app_hash",
  "last_results_hash",
  "evidence_hash",
  "proposer_address",
];

export function hashHeader(header) {
  const version = concat(varintField(1, header.version.block), varintField(2, header.version.app || 0));
  const leaves = [
    version,
    bytesField(1, utf8(header.chain_id)),
    varintField(1, header.height),
    timestamp(header.time),
    blockId(header.last_block_id),
    ...HASH_FIELDS.map((name) => bytesField(1, hexToBytes(header[name] || ""))),
  ];
  return merkleRoot(leaves);
}

export function validatorsFromRpc(items) {
  return items.map((v) => {
    if (v.pub_key.type !== "tendermint/PubKeyEd25519") throw new VerifyError("validators", `key type ${v.pub_key.type}`);
    return { address: v.address.toLowerCase(), pubKey: base64ToBytes(v.pub_key.value), power: BigInt(v.voting_power) };
  });
}

export function validatorSetHash(validators) {
  const ordered = [...validators].sort((a, b) =>
    a.power === b.power ? (a.address < b.address ? -1 : a.address > b.address ? 1 : 0) : a.power > b.power ? -1 : 1,
  );
  return merkleRoot(
    ordered.map((v) => concat(messageField(1, bytesField(1, v.pubKey)), varintField(2, v.power))),
  );
}

export function precommitSignBytes(chainId, height, round, id, time) {
  const body = concat(
    varintField(1, 2), // SIGNED_MSG_TYPE_PRECOMMIT
    sfixed64Field(2, height),
    sfixed64Field(3, round),
    messageField(4, blockId(id)),
    messageField(5, timestamp(time)),
    bytesField(6, utf8(chainId)),
  );
  return concat(uvarint(body.length), body);
}

const BLOCK_ID_FLAG_COMMIT = 2;

// Check a `commit` RPC answer's signed header against the trusted validator set; the app hash.
export function verifySignedHeader(signedHeader, validators, chainId) {
  const { header, commit } = signedHeader;
  if (header.chain_id !== chainId) throw new VerifyError("chain", `header is for ${header.chain_id}, not ${chainId}`);
  if (header.validators_hash.toLowerCase() !== bytesToHex(validatorSetHash(validators))) {
    throw new VerifyError("validator set", "the header's validators_hash is not the trusted set's");
  }
  const headerHash = bytesToHex(hashHeader(header));
  if (commit.block_id.hash.toLowerCase() !== headerHash || commit.height !== header.height) {
    throw new VerifyError("header hash", "the header does not hash to the block the commit signs");
  }
  const total = validators.reduce((n, v) => n + v.power, 0n);
  const signed = commitPower(commit, validators, chainId);
  if (signed * 3n <= total * 2n) {
    throw new VerifyError("signatures", `signed by ${signed} of ${total} voting power, not more than 2/3`);
  }
  return hexToBytes(header.app_hash);
}

// The power of `validators` (matched by address, each once) whose precommit in `commit` verifies.
export function commitPower(commit, validators, chainId) {
  const byAddress = new Map(validators.map((v) => [v.address, v]));
  let signed = 0n;
  const seen = new Set();
  for (const sig of commit.signatures) {
    const flag = typeof sig.block_id_flag === "number" ? sig.block_id_flag : Number(sig.block_id_flag);
    if (flag !== BLOCK_ID_FLAG_COMMIT) continue;
    const address = sig.validator_address.toLowerCase();
    const validator = byAddress.get(address);
    if (!validator || seen.has(address)) continue;
    seen.add(address);
    const message = precommitSignBytes(chainId, commit.height, commit.round, commit.block_id, sig.timestamp);
    // A signature that does not verify is not counted (as in the Python client): the rest must carry the power.
    let valid = false;
    try {
      valid = ed25519.verify(base64ToBytes(sig.signature), message, validator.pubKey);
    } catch {
      valid = false;
    }
    if (valid) signed += validator.power;
  }
  return signed;
}

// --- following validator-set changes (as LightClient in haca/client/light.py) ------------------------------
// A light block: {signedHeader, validators, nextValidators} (the sets at its height and the next).
// From trusted blocks (an anchor first), a header is verified forwards from the closest trusted
// block below it — adjacent: its validators are the trusted next set; skipping: more than 1/3 of
// the trusted next set's power signed it, else bisect — and in both cases more than 2/3 of its own
// set signed it; below every trusted block, down the last_block_id hash chain. No skip from a
// trusted header older than the trusting period.

const TRUST_NUM = 1n;
const TRUST_DEN = 3n;
const MAX_CLOCK_DRIFT = 10;
const MAX_BACKWARD = 1024;

const blockHeight = (b) => Number(b.signedHeader.header.height);
const blockTime = (b) => Number(parseRfc3339(b.signedHeader.header.time).seconds);
const blockTimeNs = (b) => {
  const { seconds, nanos } = parseRfc3339(b.signedHeader.header.time);
  return seconds * 1000000000n + BigInt(nanos);
};
const blockHash = (b) => bytesToHex(hashHeader(b.signedHeader.header));
const sum = (vals) => vals.reduce((n, v) => n + v.power, 0n);

function checkSets(b, chainId) {
  const h = b.signedHeader.header;
  if (h.chain_id !== chainId) throw new VerifyError("chain", `header is for ${h.chain_id}, not ${chainId}`);
  if (h.validators_hash.toLowerCase() !== bytesToHex(validatorSetHash(b.validators))) {
    throw new VerifyError("validator set", `header ${h.height}: the validators given are not its validators_hash`);
  }
  if (h.next_validators_hash.toLowerCase() !== bytesToHex(validatorSetHash(b.nextValidators))) {
    throw new VerifyError("validator set", `header ${h.height}: the next validators given are not its next_validators_hash`);
  }
}

export function checkLightBlock(b, chainId) {
  checkSets(b, chainId);
  const { header, commit } = b.signedHeader;
  if (commit.block_id.hash.toLowerCase() !== blockHash(b) || String(commit.height) !== String(header.height)) {
    throw new VerifyError("header hash", `header ${header.height} does not hash to the block the commit signs`);
  }
  const signed = commitPower(commit, b.validators, chainId);
  const total = sum(b.validators);
  if (signed * 3n <= total * 2n) {
    throw new VerifyError("signatures", `header ${header.height}: signed by ${signed} of its ${total} voting power, not more than 2/3`);
  }
}

class NotEnoughTrust extends VerifyError {}

export class LightClient {
  // fetch: async height -> light block (from any RPC); now: () -> seconds.
  constructor(chainId, anchor, fetch, trustingPeriod, now) {
    checkLightBlock(anchor, chainId);
    if (blockTime(anchor) + trustingPeriod <= now()) {
      throw new VerifyError("trusting period", `the anchor, header ${blockHeight(anchor)}, is older than the trusting period: configure a recent trusted height and hash`);
    }
    Object.assign(this, { chainId, fetch, trustingPeriod, now });
    this.trusted = new Map([[blockHeight(anchor), anchor]]);
  }

  heights() {
    return [...this.trusted.keys()].sort((a, b) => a - b);
  }

  latest() {
    const hs = this.heights();
    return this.trusted.get(hs[hs.length - 1]);
  }

  async verified(height) {
    const known = this.trusted.get(height);
    if (known) return known;
    const lowest = this.heights()[0];
    if (height < lowest) return this.backward(this.trusted.get(lowest), height);
    return this.verify(await this.fetchAt(height));
  }

  // The RPC must answer the height asked for (another would make bisection go round for ever).
  async fetchAt(height) {
    const block = await this.fetch(height);
    if (blockHeight(block) !== height) {
      throw new VerifyError("light client", `asked for header ${height}, the RPC answered header ${blockHeight(block)}`);
    }
    return block;
  }

  async verify(block) {
    const height = blockHeight(block);
    let known = this.trusted.get(height);
    if (!known) {
      const below = this.heights().filter((h) => h < height);
      if (below.length) return this.forward(this.trusted.get(below[below.length - 1]), block);
      known = await this.backward(this.trusted.get(this.heights()[0]), height);
    }
    if (blockHash(known) !== blockHash(block)) {
      throw new VerifyError("light client", `header ${height} is not the header trusted at that height`);
    }
    return known;
  }

  async forward(trusted, target) {
    const now = this.now();
    if (blockTime(trusted) + this.trustingPeriod <= now) {
      throw new VerifyError("trusting period", `the trusted header ${blockHeight(trusted)} is older than the trusting period (${this.trustingPeriod}s)`);
    }
    const pending = [target];
    while (pending.length) {
      const block = pending[pending.length - 1];
      try {
        this.step(trusted, block, now);
      } catch (err) {
        if (!(err instanceof NotEnoughTrust) || blockHeight(block) - blockHeight(trusted) < 2) throw err;
        pending.push(await this.fetchAt(Math.floor((blockHeight(trusted) + blockHeight(block)) / 2)));
        continue;
      }
      pending.pop();
      this.trusted.set(blockHeight(block), block);
      trusted = block;
    }
    return trusted;
  }

  step(trusted, block, now) {
    const [h, th] = [blockHeight(block), blockHeight(trusted)];
    if (h <= th) throw new VerifyError("light client", `header ${h} is not after the trusted header ${th}`);
    if (blockTimeNs(block) <= blockTimeNs(trusted)) throw new VerifyError("light client", `header ${h}'s time is not after trusted header ${th}'s`);
    if (blockTime(block) > now + MAX_CLOCK_DRIFT) throw new VerifyError("light client", `header ${h}'s time is in the future`);
    checkLightBlock(block, this.chainId);
    const own = block.signedHeader.header.validators_hash.toLowerCase();
    const next = trusted.signedHeader.header.next_validators_hash.toLowerCase();
    if (h === th + 1) {
      if (own !== next) throw new VerifyError("validator set", `header ${h}'s validators are not the next of trusted ${th}`);
      if (block.signedHeader.header.last_block_id.hash.toLowerCase() !== blockHash(trusted)) {
        throw new VerifyError("header hash", `header ${h} does not follow trusted header ${th}`);
      }
      return;
    }
    if (own === next) return;
    const signed = commitPower(block.signedHeader.commit, trusted.nextValidators, this.chainId);
    const total = sum(trusted.nextValidators);
    if (signed * TRUST_DEN <= total * TRUST_NUM) {
      throw new NotEnoughTrust("signatures", `header ${h}: validators trusted at ${th} signed ${signed} of ${total} power, not more than 1/3`);
    }
  }

  async backward(trusted, height) {
    if (blockHeight(trusted) - height > MAX_BACKWARD) {
      throw new VerifyError("light client", `header ${height} is too far below the nearest trusted one`);
    }
    let block = trusted;
    while (blockHeight(block) > height) {
      const below = await this.fetchAt(blockHeight(block) - 1);
      const link = block.signedHeader.header.last_block_id.hash.toLowerCase();
      if (blockHeight(below) !== blockHeight(block) - 1 || blockHash(below) !== link) {
        throw new VerifyError("header hash", `header ${blockHeight(block) - 1} is not the one header ${blockHeight(block)} follows`);
      }
      if (below.signedHeader.header.next_validators_hash.toLowerCase() !== block.signedHeader.header.validators_hash.toLowerCase()) {
        throw new VerifyError("validator set", `header ${blockHeight(block) - 1}'s next validators are not header ${blockHeight(block)}'s`);
      }
      checkSets(below, this.chainId);
      block = below;
    }
    this.trusted.set(blockHeight(block), block);
    return block;
  }
}

// --- RLP and the Merkle-Patricia proof -------------------------------------------------------

export function rlpDecode(bytes) {
  const [item, end] = decodeAt(bytes, 0);
  if (end !== bytes.length) throw new VerifyError("proof", "trailing bytes after the RLP item");
  return item;
}

function decodeAt(bytes, at) {
  if (at >= bytes.length) throw new VerifyError("proof", "truncated RLP");
  const b = bytes[at];
  const length = (start, n) => {
    if (start + n > bytes.length) throw new VerifyError("proof", "truncated RLP length");
    let len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + bytes[start + i];
    return len;
  };
  const take = (start, len) => {
    if (start + len > bytes.length) throw new VerifyError("proof", "truncated RLP item");
    return bytes.slice(start, start + len);
  };
  if (b < 0x80) return [bytes.slice(at, at + 1), at + 1];
  if (b < 0xb8) return [take(at + 1, b - 0x80), at + 1 + b - 0x80];
  if (b < 0xc0) {
    const n = b - 0xb7;
    const len = length(at + 1, n);
    return [take(at + 1 + n, len), at + 1 + n + len];
  }
  let start, len;
  if (b < 0xf8) {
    start = at + 1;
    len = b - 0xc0;
  } else {
    const n = b - 0xf7;
    len = length(at + 1, n);
    start = at + 1 + n;
  }
  const items = [];
  let pos = start;
  while (pos < start + len) {
    const [item, next] = decodeAt(bytes, pos);
    items.push(item);
    pos = next;
  }
  if (pos !== start + len) throw new VerifyError("proof", "RLP list length mismatch");
  return [items, pos];
}

export function rlpEncode(item) {
  if (item instanceof Uint8Array) {
    if (item.length === 1 && item[0] < 0x80) return item;
    return concat(rlpLength(item.length, 0x80), item);
  }
  const body = concat(...item.map(rlpEncode));
  return concat(rlpLength(body.length, 0xc0), body);
}

function rlpLength(len, offset) {
  if (len < 56) return Uint8Array.of(offset + len);
  const bytes = [];
  for (let n = len; n > 0; n = Math.floor(n / 256)) bytes.unshift(n % 256);
  return Uint8Array.of(offset + 55 + bytes.length, ...bytes);
}

function nibbles(bytes) {
  const out = [];
  for (const b of bytes) out.push(b >> 4, b & 15);
  return out;
}

// The value `proof` shows for `key` under `root` (empty when it shows the key absent).
export function verifyStateProof(root, keyBytes, proofBytes) {
  const nodes = rlpDecode(proofBytes);
  if (!Array.isArray(nodes)) throw new VerifyError("proof", "a proof is a list of trie nodes");
  const byHash = new Map(nodes.map((node) => [bytesToHex(keccak_256(rlpEncode(node))), node]));
  const path = nibbles(keyBytes);
  let ref = root;
  let at = 0;
  for (let depth = 0; depth < 130; depth++) {
    let node;
    if (ref instanceof Uint8Array) {
      if (ref.length === 0) return new Uint8Array(); // an empty slot: the key is absent
      node = byHash.get(bytesToHex(ref));
      if (!node) throw new VerifyError("proof", `the proof lacks trie node ${bytesToHex(ref).slice(0, 16)}…`);
    } else {
      node = ref; // a node under 32 bytes is embedded in its parent
    }
    if (node.length === 17) {
      if (at === path.length) return node[16];
      ref = node[path[at]];
      at += 1;
      continue;
    }
    if (node.length !== 2) throw new VerifyError("proof", "a trie node has neither 2 nor 17 items");
    const encoded = nibbles(node[0]);
    const flag = encoded[0];
    const partial = encoded.slice(flag & 1 ? 1 : 2);
    const rest = path.slice(at, at + partial.length);
    if (rest.length !== partial.length || rest.some((n, i) => n !== partial[i])) return new Uint8Array();
    at += partial.length;
    if (flag >= 2) return at === path.length ? node[1] : new Uint8Array(); // a leaf
    ref = node[1]; // an extension
  }
  throw new VerifyError("proof", "the proof is deeper than any key");
}
