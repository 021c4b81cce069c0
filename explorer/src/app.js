// The explorer page: follows the chain block by block over CometBFT RPC and the app's queries,
// and checks each receipt it shows in this browser (chain.js provenQuery: a state proof against
// the app hash of a header the light client verified from the trusted validators, across set changes).

import {
  CategoryScale,
  Chart,
  Filler,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from "chart.js";
import { NotFound, decodeTx, eventAttrs, head, loadConfig, provenQuery, provenValues, query, rpc, txByHash } from "./chain.js";
import { VerifyError, bytesToHex, hexToBytes } from "./lightclient.js";
import { DEV_LABEL, gpuText, isDev, judgeEnclave, policyKey } from "./tee.js";

Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale, Filler, Tooltip);

const BACKFILL = 60; // blocks read at start
const PER_TICK = 20; // blocks read per poll at most, so a long way behind still renders
const KEEP_BLOCKS = 200;
const POLL_MS = 1000;

// --- what the page has seen ------------------------------------------------------------------

const seen = {
  config: null,
  height: 0,
  appHash: "",
  firstHeight: 0,
  blocks: [], // newest first
  receipts: new Map(), // receipt id -> what the chain said of it
  slashes: [],
  batches: [],
  burned: [], // {height, burned, total}
  feesToNodes: 0n,
  settlementBurned: 0n,
  error: "",
  unreadable: "", // the last block the page could not read in full
};

const short = (text, n = 10) => (text && text.length > n + 4 ? `${text.slice(0, n)}…` : text || "");
const esc = (value) =>
  String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const amount = (value) => {
  try {
    return BigInt(value).toLocaleString("en-US");
  } catch {
    return esc(value);
  }
};
const big = (value) => {
  try {
    return BigInt(value ?? 0);
  } catch {
    return 0n;
  }
};
const statusTag = (status) => `<span class="status status-${esc(status)}">${esc(status)}</span>`;
const link = (kind, id, text = short(id, 12)) => `<a class="mono" href="#/${kind}/${esc(id)}">${esc(text)}</a>`;
// A receipt's answer time is in whole seconds (the node's clock): so is a trust gap.
const seconds = (ms) => (ms < 1000 ? "< 1 s" : `${Math.round(ms / 1000)} s`);

function receipt(id) {
  let rec = seen.receipts.get(id);
  if (!rec) {
    rec = { id, status: "submitted" };
    seen.receipts.set(id, rec);
  }
  return rec;
}

// The receipts txs carry (settle, claim): their node-clock answer time, for the trust gap. `outcomes`:
// the txs' results in a block (a failed tx carries nothing); none for txs still in the mempool.
function readTxs(txs, outcomes = null) {
  const found = [];
  txs.forEach((raw, i) => {
    if (outcomes && Number((outcomes[i] || {}).code || 0) !== 0) return;
    const tx = decodeTx(raw);
    for (const msg of tx && Array.isArray(tx.msgs) ? tx.msgs : []) {
      const value = (msg && msg.value) || {};
      const items = msg.type === "inference/settle" && Array.isArray(value.items) ? value.items : [];
      const signed = items.map((item) => item && item.receipt);
      if (msg.type === "inference/claim") signed.push(value.receipt);
      for (const r of signed) {
        if (!r || !r.id) continue;
        const rec = receipt(r.id);
        Object.assign(rec, { timestamp: Number(r.timestamp) * 1000, node: r.node, client: r.client, mode: r.mode });
        Object.assign(rec, { model_id: r.model_id, fee: r.fee, request_id: r.request_id });
        found.push(rec);
      }
    }
  });
  return found;
}

// Settlements and claims waiting in the mempool: their receipts show as submitted until a block has them.
async function readMempool() {
  const pending = await rpc("unconfirmed_txs", { limit: "50" });
  for (const rec of readTxs(pending.txs || [])) {
    if (!rec.settledHeight && rec.status !== "claimed") rec.status = "submitted";
  }
}

function readEvents(height, time, results) {
  const events = [...(results.txs_results || []).flatMap((t) => t.events || []), ...(results.finalize_block_events || [])];
  for (const event of events) {
    const a = eventAttrs(event);
    if (event.type === "settle") {
      const rec = receipt(a.receipt_id);
      Object.assign(rec, a, { settledHeight: height, settledTime: time });
      seen.feesToNodes += big(a.fee);
      seen.settlementBurned += big(a.settlement_fee);
    } else if (event.type === "claim" && a.receipt_id) {
      const rec = receipt(a.receipt_id);
      if (!rec.settledHeight) Object.assign(rec, { status: "claimed", claimHeight: height });
    } else if (event.type === "slash") {
      seen.slashes.unshift({ height, ...a });
      if (a.receipt_id && seen.receipts.has(a.receipt_id)) seen.receipts.get(a.receipt_id).status = "failed";
    } else if (event.type === "settle_batch") {
      seen.batches.unshift({ height, ...a });
      seen.feesToNodes += big(a.fees);
      seen.settlementBurned += big(a.burned);
    }
  }
}

// One block: fetched whole first (a failure there is retried next poll), then read once; a block
// the page cannot read in full is reported and passed, never re-read (that would count it twice).
async function ingest(height) {
  const [block, results, supply] = await Promise.all([
    rpc("block", { height: String(height) }),
    rpc("block_results", { height: String(height) }),
    query("/bank/supply", "", height).catch(() => null), // a pruned height has no state: no point
  ]);
  try {
    const header = block.block.header;
    const txs = block.block.data.txs || [];
    const time = Date.parse(header.time);
    const row = { height, time, hash: block.block_id.hash, txs: txs.length, proposer: header.proposer_address };
    const point = supply ? { height, burned: BigInt(supply.burned), total: BigInt(supply.total) } : null;
    seen.appHash = header.app_hash;
    seen.blocks.unshift(row);
    seen.blocks.length = Math.min(seen.blocks.length, KEEP_BLOCKS);
    if (point) seen.burned.push(point);
    readTxs(txs, results.txs_results || []);
    readEvents(height, time, results);
  } catch (err) {
    seen.unreadable = `block ${height} could not be read in full: ${err.message}`;
  }
  seen.height = height;
}

async function poll() {
  try {
    const latest = await head();
    if (!seen.height) seen.height = seen.firstHeight = Math.max(0, latest - BACKFILL);
    const until = Math.min(latest, seen.height + PER_TICK);
    for (let h = seen.height + 1; h <= until; h++) await ingest(h);
    if (until === latest) await readMempool();
    seen.error = "";
  } catch (err) {
    seen.error = `the chain did not answer: ${err.message}`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
  if (current && current.live) current.update();
}

// --- views -------------------------------------------------------------------------------------

const view = document.getElementById("view");
let current = null;

function section(title, body, id = "") {
  return `<section${id ? ` id="${id}"` : ""}><h2>${esc(title)}</h2>${body}</section>`;
}

function table(headers, rows, empty = "nothing yet") {
  if (!rows.length) return `<p class="muted">${esc(empty)}</p>`;
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

function trustGap(rec) {
  if (!rec.timestamp) return `<span class="muted">—</span>`;
  if (rec.settledTime) return seconds(Math.max(0, rec.settledTime - rec.timestamp));
  return `<span class="status status-open">open ${seconds(Math.max(0, Date.now() - rec.timestamp))}</span>`;
}

// The receipts seen (those `keep` selects), newest first, as table rows.
function receiptRows(limit, keep = () => true) {
  const all = [...seen.receipts.values()].filter(keep).sort(
    (a, b) => (b.settledHeight || b.claimHeight || 1e15) - (a.settledHeight || a.claimHeight || 1e15),
  );
  return all.slice(0, limit).map((r) => [
    link("receipt", r.id),
    esc(r.mode || ""),
    statusTag(r.status),
    trustGap(r),
    r.node ? link("address", r.node) : "",
    r.fee ? amount(r.fee) : "",
    r.settledHeight ? link("block", String(r.settledHeight), String(r.settledHeight)) : "",
  ]);
}

const RECEIPT_HEADERS = ["receipt", "mode", "status", "trust gap (answer → settled)", "node", "fee", "block"];

function blockRows(limit) {
  return seen.blocks
    .slice(0, limit)
    .map((b) => [
      link("block", String(b.height), String(b.height)),
      esc(new Date(b.time).toISOString().replace("T", " ").slice(0, 23)),
      String(b.txs),
      `<span class="mono">${esc(short(b.proposer, 12))}</span>`,
      `<span class="mono">${esc(short(b.hash, 16))}</span>`,
    ]);
}

function cards() {
  const last = seen.burned[seen.burned.length - 1];
  const denom = (seen.config && seen.config.denom) || "";
  const items = [
    ["chain", esc(seen.config ? seen.config.chain_id : "")],
    ["height", `<span id="height">${seen.height || "…"}</span>`],
    ["app hash", `<span class="mono">${esc(short(seen.appHash, 16))}</span>`],
    ["validators (trusted)", String(seen.config ? seen.config.validators.length : 0)],
    ["supply", last ? `${amount(last.total)} ${esc(denom)}` : "…"],
    ["burned", last ? `<span id="burned">${amount(last.burned)}</span> ${esc(denom)}` : "…"],
    ["fees paid to nodes (seen)", `${amount(seen.feesToNodes)} ${esc(denom)}`],
  ];
  const error = [seen.error, seen.unreadable].filter(Boolean).map((e) => `<p class="error">${esc(e)}</p>`).join("");
  return error + `<div class="cards">${items.map(([l, v]) => `<div class="card"><div class="label">${l}</div><div class="value">${v}</div></div>`).join("")}</div>`;
}

class BurnChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.chart = new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [{ label: "burned", data: [], fill: true, pointRadius: 0, borderColor: "#b3261e", backgroundColor: "rgba(179,38,30,.12)" }] },
      options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { x: { title: { display: true, text: "height" } } } },
    });
    this.update();
  }

  update() {
    const points = seen.burned;
    this.chart.data.labels = points.map((p) => String(p.height));
    this.chart.data.datasets[0].data = points.map((p) => Number(p.burned));
    this.chart.update("none");
    this.canvas.dataset.points = String(points.length);
    this.canvas.dataset.lastBurned = points.length ? String(points[points.length - 1].burned) : "0";
  }
}

function liveView(render, withChart = false) {
  return {
    live: true,
    mount() {
      view.innerHTML = `<div id="live"></div>${withChart ? section("Burned over time", `<div class="chart-box"><canvas id="burn-chart"></canvas></div>`) : ""}`;
      this.chart = withChart ? new BurnChart(document.getElementById("burn-chart")) : null;
      this.update();
    },
    update() {
      document.getElementById("live").innerHTML = render();
      if (this.chart) this.chart.update();
    },
  };
}

const overview = () =>
  liveView(
    () =>
      cards() +
      section("Latest receipts", table(RECEIPT_HEADERS, receiptRows(10), "no receipt settled or claimed in the blocks seen"), "receipts") +
      section("Recent blocks", table(["height", "time (UTC)", "txs", "proposer", "hash"], blockRows(10)), "blocks"),
    true,
  );

const receiptsView = () =>
  liveView(() => section(`Receipts (since block ${seen.firstHeight + 1})`, table(RECEIPT_HEADERS, receiptRows(500), "none seen yet"), "receipts"));

const blocksView = () => liveView(() => section("Blocks", table(["height", "time (UTC)", "txs", "proposer", "hash"], blockRows(KEEP_BLOCKS))));

const economicsView = () =>
  liveView(
    () =>
      cards() +
      section(
        "Settlement",
        `<dl class="kv"><dt>fees paid to nodes</dt><dd>${amount(seen.feesToNodes)}</dd><dt>settlement fees burned</dt><dd>${amount(seen.settlementBurned)}</dd><dt>counted since block</dt><dd>${seen.firstHeight + 1}</dd></dl>`,
      ) +
      section(
        "Slashes",
        table(["height", "reason", "node", "amount", "receipt"], seen.slashes.map((s) => [String(s.height), esc(s.reason), esc(short(s.node || s.address || s.validator, 14)), amount(s.amount || s.slashed || 0), s.receipt_id ? link("receipt", s.receipt_id) : ""]), "none"),
      ) +
      section(
        "Batches",
        table(["height", "batch", "node", "mode", "settled", "rejected", "fees"], seen.batches.map((b) => [String(b.height), `<span class="mono">${esc(short(b.batch_id, 14))}</span>`, link("address", b.node), esc(b.mode), esc(b.settled), esc(b.rejected), amount(b.fees)]), "none"),
      ),
    true,
  );

// A view read once when opened (its own queries), then shown.
function onceView(load) {
  return {
    live: false,
    async mount() {
      view.innerHTML = `<p class="muted">loading…</p>`;
      let html;
      try {
        html = await load();
      } catch (err) {
        html =
          err instanceof NotFound
            ? `<p class="notfound">Not found: ${esc(err.message)}</p>`
            : `<p class="error">The chain did not answer: ${esc(err.message)}</p>`;
      }
      if (current === this) view.innerHTML = html; // not if the reader has moved on meanwhile
    },
  };
}

async function optional(promise) {
  try {
    return await promise;
  } catch (err) {
    if (err instanceof NotFound) return null;
    throw err;
  }
}

// Where an enclave runs its models, as HTML: its platform (the attestation format) and each GPU
// attested with it, anything DEV labelled loud.
function platformHtml(record) {
  const platform = record.format || "?";
  let html = `<span class="platform" data-platform="${esc(platform)}">platform <b>${esc(platform)}</b></span>`;
  if (platform === "dev" || record.dev) html += ` <span class="dev">DEV platform: ${esc(DEV_LABEL)}</span>`;
  const gpus = record.gpus || [];
  const items = gpus.map(
    (g) => `<li class="gpu" data-dev="${g.dev ? "true" : "false"}">GPU ${esc(gpuText(g))} <span class="muted">(${esc(g.format)})</span>${g.dev ? ` <span class="dev">DEV GPU: ${esc(DEV_LABEL)}</span>` : ""}</li>`,
  );
  html += items.length ? `<ul class="gpus">${items.join("")}</ul>` : ` <span class="muted gpus-none">no GPU attested</span>`;
  return html;
}

// A node's enclave keys, latest attested first (the three latest; older keys counted).
const SHOWN_ENCLAVES = 3;
function enclaveCells(enclaves) {
  const latest = [...enclaves].sort((a, b) => Number(b.attested_height || 0) - Number(a.attested_height || 0));
  const shown = latest.slice(0, SHOWN_ENCLAVES).map(
    (e) => `<div class="enclave" data-key="${esc(e.key)}">${platformHtml(e)}<div class="muted">key <span class="mono">${esc(short(e.key, 12))}</span>, attested at ${esc(e.attested_height)}, good until ${esc(e.good_until)}</div></div>`,
  );
  const older = latest.length - shown.length;
  return shown.join("") + (older > 0 ? `<div class="muted">and ${older} older key${older > 1 ? "s" : ""}</div>` : "");
}

const nodesView = () =>
  onceView(async () => {
    const { nodes } = await query("/registry/nodes");
    const rows = [];
    for (const node of nodes) {
      const [stake, enclaves] = await Promise.all([query("/staking/stake", node.address), optional(query("/tee/node_enclaves", node.address))]);
      const tee = enclaveCells((enclaves && enclaves.enclaves) || []);
      const slashes = seen.slashes.filter((s) => [s.node, s.address].includes(node.address));
      rows.push([
        link("address", node.address),
        esc((node.modes || []).join(", ")),
        amount(stake.bonded),
        tee || `<span class="muted">none</span>`,
        slashes.length ? `<span class="status status-slashed">${slashes.length}</span>` : "0",
        esc(node.url || node.endpoint || ""),
      ]);
    }
    return section("Nodes", table(["node", "modes", "stake (bonded)", "enclaves (platform, GPUs)", "slashes (seen)", "endpoint"], rows, "no node registered"), "nodes");
  });

const modelsView = () =>
  onceView(async () => {
    const { models } = await query("/registry/models");
    const rows = models.map((m) => [
      `<b>${esc(m.name)}</b> v${esc(m.version)}`,
      esc((m.modes || []).join(", ")),
      `${amount(m.price)} / ${esc(m.price_unit)}${m.completion_price && m.completion_price !== "0" ? ` (+${amount(m.completion_price)} / completion token)` : ""}`,
      `<span class="mono">${esc(short(m.model_id, 24))}</span>`,
      `<details><summary>manifest</summary><pre>${esc(JSON.stringify(m, null, 2))}</pre></details>`,
    ]);
    return section("Models", table(["model", "modes", "price", "model id", ""], rows, "no model registered"));
  });

const CHECK_STEPS = {
  "trusted set": "the trusted validator set (pinned in this browser)",
  validators: "the trusted validator set's keys",
  "header height": "the header's height",
  query: "the chain's answer",
  proof: "the state proof",
  chain: "the header's chain id",
  "validator set": "the header's validator set",
  "header hash": "the header hash",
  signatures: "the validators' signatures",
  answer: "the answer against the proven value",
  input: "the RPC answer's format",
};

function checkPanel(result) {
  const steps = result.steps.map((s) => `<li class="${s.ok ? "ok" : "bad"}">${esc(s.name)}${s.detail ? ` <span class="muted">${esc(s.detail)}</span>` : ""}</li>`);
  const verdict = result.verified
    ? `<div id="check" class="check ok" data-result="verified">verified here: this record is in the state whose app hash more than 2/3 of the trusted validators signed</div>`
    : `<div id="check" class="check bad" data-result="failed" data-step="${esc(result.failed)}">NOT verified: the check failed at ${esc(CHECK_STEPS[result.failed] || result.failed)} (${esc(result.failed)}): ${esc(result.error)}</div>`;
  return verdict + `<ol class="steps">${steps.join("")}</ol>`;
}

function kv(record) {
  return `<dl class="kv">${Object.entries(record)
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd class="mono">${k === "status" ? statusTag(v) : typeof v === "object" ? esc(JSON.stringify(v)) : esc(v)}</dd>`)
    .join("")}</dl>`;
}

// Where the app keeps a settled receipt's record (haca/chain/modules/inference/keeper.py RECEIPT_PREFIX).
function receiptKey(id) {
  return new Uint8Array([...new TextEncoder().encode("inference/receipt/"), ...hexToBytes(id)]);
}

const receiptView = (id) =>
  onceView(async () => {
    const local = seen.receipts.get(id);
    let result;
    try {
      result = await provenQuery("/inference/receipt", id, receiptKey(id));
    } catch (err) {
      if (!(err instanceof NotFound)) throw err;
      const claim = await optional(query("/inference/claim", id));
      if (claim || (local && local.status === "claimed")) {
        return section(`Receipt ${id}`, `<p>${statusTag("claimed")} in the trust gap: a client claimed it and its evidence has not settled yet.</p>${claim ? kv(claim) : ""}`);
      }
      throw new NotFound(`no receipt ${id} has settled${local ? "" : " (a batched receipt: see its node's batch)"}`);
    }
    if (result.verified && result.answer.receipt_id !== id) {
      result = { ...result, verified: false, failed: "answer", error: `the proven record is receipt ${result.answer.receipt_id}'s` };
    }
    const gap = local && local.timestamp && local.settledTime ? `<p>trust gap (answer → settled): ${seconds(local.settledTime - local.timestamp)}</p>` : "";
    const record = result.answer ? `${result.verified ? "" : "<p><b>What the server answered (NOT verified):</b></p>"}${kv(result.answer)}` : "";
    const status = result.verified ? statusTag(result.answer.status) : statusTag("unchecked");
    const dev = result.verified && result.answer.dev ? ` <span class="dev">computed and signed inside the enclave on the DEV platform: ${esc(DEV_LABEL)}</span>` : "";
    // a tee receipt: where it was computed, and the enclave's approval for its model (only once the record is proven)
    const tee = result.verified && result.answer.enclave_key ? enclavePanel(await enclaveCheck(result.answer)) : "";
    return section(`Receipt ${id}`, `<div id="receipt-status">${status}${dev}</div>${gap}${checkPanel(result)}${record}`) + tee;
  });

const decodeJson = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

// The enclave that signed a settled tee receipt (`record`, its proven settlement record), checked as
// `haca verify` checks it: the model's terms (its name), the enclave's record (platform, GPUs), the
// measurement's approvals and the TEE policy, each proven against a header the trusted validators
// signed. Never throws: the result names the step that failed.
async function enclaveCheck(record) {
  const steps = [];
  const step = (name, ok, detail = "") => steps.push({ name, ok, detail });
  let judged = null;
  try {
    const terms = await provenValues("/registry/model_in_effect", `${record.model_id}@${record.height}@${record.node}`);
    const [raw] = [...terms.values.values()];
    if (terms.values.size !== 1 || !raw.length) throw new VerifyError("proof", "the model's terms come with one proof of them");
    const manifest = decodeJson(raw);
    if (manifest.model_id !== record.model_id) throw new VerifyError("answer", `the proven terms are model ${manifest.model_id}'s, not ${record.model_id}'s`);
    step(`the receipt's model is ${manifest.name} v${manifest.version}`, true, "its terms proven");
    const [enclave, policy] = await Promise.all([
      provenValues("/tee/enclave", `${record.enclave_key}@${record.height}/${manifest.name}`),
      provenValues("/tee/policy", ""),
    ]);
    const policyRaw = policy.values.get(bytesToHex(policyKey()));
    if (!policyRaw || !policyRaw.length) throw new VerifyError("proof", "the answer does not prove the TEE policy");
    judged = judgeEnclave({ key: record.enclave_key, model: manifest.name, values: enclave.values, policy: decodeJson(policyRaw) });
    step(`enclave key ${short(record.enclave_key, 12)}: platform ${judged.platform}, ${judged.gpus.length} GPU(s) attested`, true, `record proven at height ${enclave.height}`);
    if (judged.step === "approval") throw new VerifyError("approval", judged.reason);
    step(`its measurement is approved for ${judged.scope === "*" ? "every model (*)" : `model ${judged.model}`}`, true, short(judged.record.measurement_id, 24));
    if (judged.step === "gpu required") throw new VerifyError("gpu required", judged.reason);
    step(judged.gpuRequired ? `model ${judged.model} requires GPU evidence: met` : `model ${judged.model} does not require GPU evidence`, true, "TEE policy proven");
    return { verified: true, steps, judged };
  } catch (err) {
    if (err instanceof NotFound) {
      step("enclave", false, err.message);
      return { verified: false, steps, judged, failed: "enclave", error: err.message };
    }
    const name = err instanceof VerifyError ? err.step : "query";
    const reason = err instanceof VerifyError ? err.reason : err.message;
    step(name, false, reason);
    return { verified: false, steps, judged, failed: name, error: reason };
  }
}

function enclavePanel(check) {
  const judged = check.judged;
  const where = judged ? platformHtml(judged.record) : `<span class="muted">unknown: the enclave's record could not be checked</span>`;
  const steps = check.steps.map((s) => `<li class="${s.ok ? "ok" : "bad"}">${esc(s.name)}${s.detail ? ` <span class="muted">${esc(s.detail)}</span>` : ""}</li>`);
  const verdict = check.verified
    ? `<div id="enclave-check" class="check ok" data-result="verified">verified here: computed and signed inside an enclave whose measurement is approved for model ${esc(judged.model)}${judged.dev ? " (DEV platform)" : ""}</div>`
    : `<div id="enclave-check" class="check bad" data-result="failed" data-step="${esc(check.failed)}">NOT verified: ${esc(check.failed)}: ${esc(check.error)}</div>`;
  const note = `<p class="muted">The GPU reports were verified by the validators when the key registered; <code>haca verify</code> re-verifies them.</p>`;
  return section("Enclave", `${verdict}<div id="enclave-platform" data-dev="${judged && isDev(judged.record) ? "true" : "false"}">${where}</div><ol class="tee-steps">${steps.join("")}</ol>${note}`, "enclave");
}

function msgSummary(msg) {
  const items = msg.value && Array.isArray(msg.value.items) ? msg.value.items.length : 0;
  if (msg.type === "inference/settle") return `${esc(msg.type)} (${items} receipts)`;
  if (msg.type === "inference/settle_batch") return `${esc(msg.type)} (${esc((msg.value || {}).count ?? "")} receipts)`;
  return esc(msg.type);
}

const blockView = (height) =>
  onceView(async () => {
    const h = Number(height);
    if (!Number.isSafeInteger(h) || h < 1) throw new NotFound(`${height} is not a block height`);
    let block;
    try {
      block = await rpc("block", { height: String(h) });
    } catch (err) {
      throw new NotFound(`no block ${h} (${err.message})`);
    }
    const results = await rpc("block_results", { height: String(h) });
    const header = block.block.header;
    const rows = (block.block.data.txs || []).map((raw, i) => {
      const tx = decodeTx(raw);
      const outcome = (results.txs_results || [])[i] || {};
      return [String(i), tx ? link("address", tx.signer) : "", tx ? (tx.msgs || []).map(msgSummary).join("<br>") : "(undecodable)", Number(outcome.code || 0) === 0 ? "ok" : `code ${esc(outcome.code)}: ${esc(outcome.log)}`];
    });
    return (
      section(`Block ${h}`, kv({ hash: block.block_id.hash, time: header.time, proposer: header.proposer_address, app_hash: header.app_hash, txs: rows.length })) +
      section("Transactions", table(["#", "signer", "messages", "result"], rows, "no transactions"))
    );
  });

const txView = (hash) =>
  onceView(async () => {
    const tx = await txByHash(hash);
    const body = decodeTx(tx.tx);
    const events = (tx.tx_result.events || []).map((e) => [esc(e.type), esc(JSON.stringify(eventAttrs(e)))]);
    return (
      section(`Tx ${tx.hash}`, kv({ height: tx.height, code: tx.tx_result.code || 0, log: tx.tx_result.log || "", signer: body ? body.signer : "", messages: body ? (body.msgs || []).map((m) => m.type).join(", ") : "" })) +
      section("Events", table(["type", "attributes"], events, "none"))
    );
  });

const addressView = (address) =>
  onceView(async () => {
    const [balance, stake, node] = await Promise.all([query("/bank/balance", address), query("/staking/stake", address), optional(query("/registry/node", address))]);
    const mine = receiptRows(500, (r) => r.node === address || r.client === address);
    return (
      section(`Address ${address}`, kv({ balance: balance.balance, denom: balance.denom, bonded: stake.bonded, unbonding: stake.unbonding, node: node ? (node.modes || []).join(", ") : "not a node" })) +
      section("Receipts (seen)", table(RECEIPT_HEADERS, mine, "none seen"))
    );
  });

// --- search ------------------------------------------------------------------------------------

const HASH32 = /^(0x)?[0-9a-fA-F]{64}$/;
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;

// Where a search text leads: a receipt, a tx, an address or a block; else a "not found" page.
async function search(text) {
  const q = text.trim();
  if (ADDRESS.test(q)) return `#/address/${q.toLowerCase()}`;
  if (/^[0-9]{1,15}$/.test(q)) return `#/block/${Number(q)}`;
  if (HASH32.test(q)) {
    const bare = q.replace(/^0x/, "");
    const id = `0x${bare.toLowerCase()}`;
    if (seen.receipts.has(id) || (await optional(query("/inference/receipt", id))) || (await optional(query("/inference/claim", id)))) {
      return `#/receipt/${id}`;
    }
    if (await optional(txByHash(bare))) return `#/tx/${bare.toUpperCase()}`;
    return `#/notfound/${encodeURIComponent(`no receipt or tx with id ${q}`)}`;
  }
  return `#/notfound/${encodeURIComponent(`“${q.slice(0, 80)}” is not a receipt id, tx hash, address (0x + 40 hex) or block height`)}`;
}

document.getElementById("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("search-input");
  if (!input.value.trim()) return;
  try {
    location.hash = await search(input.value);
  } catch (err) {
    location.hash = `#/notfound/${encodeURIComponent(`the search could not be answered: ${err.message}`)}`;
  }
});

const notFoundView = (message) =>
  onceView(async () => {
    throw new NotFound(decodeURIComponent(message));
  });

// --- routing -----------------------------------------------------------------------------------

const ROUTES = {
  "": overview,
  receipts: receiptsView,
  blocks: blocksView,
  economics: economicsView,
  nodes: nodesView,
  models: modelsView,
  receipt: receiptView,
  block: blockView,
  tx: txView,
  address: addressView,
  notfound: notFoundView,
};

function route() {
  const [, name = "", arg = ""] = location.hash.replace(/^#/, "").split("/");
  const make = ROUTES[name];
  const next = make ? make(arg) : notFoundView(encodeURIComponent(`no page ${location.hash}`));
  current = next;
  next.mount();
}

async function start() {
  try {
    seen.config = await loadConfig();
    document.getElementById("chain").textContent = `${seen.config.chain_id} · ${seen.config.validators.length} trusted validators`;
  } catch (err) {
    view.innerHTML = `<p class="error">The explorer has no configuration: ${esc(err.message)}</p>`;
    return;
  }
  window.addEventListener("hashchange", route);
  route();
  poll();
}

start();
