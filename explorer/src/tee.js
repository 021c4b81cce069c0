// Where a tee receipt was computed, and the page's check of it, as haca/client/tee.py makes it:
// the enclave key's record (its platform, i.e. the attestation format, and the summary of each GPU
// attested with it), the measurement's approval for the receipt's model or for every model ("*"),
// and the TEE policy's gpu_required, all judged from values proven against an app hash (chain.js
// provenQueryKeys), never from the server's answer. The GPU reports themselves were verified by the
// validators at registration; the browser shows their summary (`haca verify` re-verifies them).
// No DOM here: explorer/test/tee_cases.mjs runs the same judgement in Node.

import { VerifyError, bytesToHex } from "./lightclient.js";

export const DEV_LABEL = "DEV-MODE, NOT FOR PRODUCTION";
export const GLOBAL_SCOPE = "*";
const ARCHITECTURES = { GA: "Ampere", AD: "Ada", GH: "Hopper", GB: "Blackwell" }; // NVIDIA chip prefixes

const utf8 = (text) => new TextEncoder().encode(text);
const decode = (bytes) => new TextDecoder().decode(bytes);

// --- state keys (haca/types/tee.py) -----------------------------------------------------------

function addrBytes(address) {
  const clean = String(address).replace(/^0x/, "");
  if (!/^[0-9a-fA-F]{40}$/.test(clean)) throw new VerifyError("input", `not an address: ${String(address).slice(0, 44)}`);
  return Uint8Array.from({ length: 20 }, (_, i) => parseInt(clean.slice(2 * i, 2 * i + 2), 16));
}

export const policyKey = () => utf8("tee/policy");
export const enclaveKey = (key) => new Uint8Array([...utf8("tee/enclave/"), ...addrBytes(key)]);
export const approvalKey = (scope, measurementId) => utf8(`tee/approval/${scope}/${measurementId}`);

// --- in words ------------------------------------------------------------------------------------

export function gpuArchitecture(chip) {
  return chip ? ARCHITECTURES[String(chip).slice(0, 2).toUpperCase()] || "" : "";
}

// One GPU summary in words, without its DEV flag: "GH100 (Hopper), driver 550.54.15, VBIOS …".
export function gpuText(gpu) {
  const chip = gpu.chip || "unknown chip";
  const arch = gpuArchitecture(chip);
  let text = arch ? `${chip} (${arch})` : chip;
  if (gpu.driver_version) text += `, driver ${gpu.driver_version}`;
  if (gpu.vbios_version) text += `, VBIOS ${gpu.vbios_version}`;
  return text;
}

// One GPU summary in words, as haca.client.tee.describe_gpu says it (a DEV GPU flagged).
export const describeGpu = (gpu) => gpuText(gpu) + (gpu.dev ? ` [DEV GPU: ${DEV_LABEL}]` : "");

// Where an enclave ran, as haca.client.tee.describe_platform says it.
export function describePlatform(platform, gpus = []) {
  let text = platform || "unknown platform";
  if (platform === "dev") text += ` [DEV platform: ${DEV_LABEL}]`;
  for (const gpu of gpus) text += `, GPU ${describeGpu(gpu)}`;
  return text;
}

// Whether anything an enclave was attested with is DEV evidence (its platform, or a GPU).
export const isDev = (record) => Boolean(record && (record.dev || (record.gpus || []).some((g) => g.dev)));

// --- the judgement -------------------------------------------------------------------------------

function provenJson(values, key, what) {
  const raw = values.get(bytesToHex(key));
  if (raw === undefined) throw new VerifyError("proof", `the answer does not prove the ${what}`);
  if (!raw.length) throw new VerifyError("proof", `the proof shows no ${what}`);
  try {
    return JSON.parse(decode(raw));
  } catch {
    throw new VerifyError("proof", `the proven ${what} is not JSON`);
  }
}

// The enclave that signed a receipt, judged from proven values (a Map: hex of a state key -> its
// value, empty where absent) for `model` under the proven TEE `policy`: its record (platform, GPUs),
// and whether its measurement is approved for the model (or "*") and the policy's gpu_required is
// met. `ok` false names the `step` ("approval", "gpu required") and gives the `reason` `haca verify`
// gives. A value the answer does not prove throws a VerifyError (step "proof").
export function judgeEnclave({ key, model, values, policy }) {
  const record = provenJson(values, enclaveKey(key), "enclave record");
  if (String(record.key).toLowerCase() !== String(key).toLowerCase()) {
    throw new VerifyError("proof", `the proven enclave record is key ${record.key}'s, not ${key}'s`);
  }
  const mid = String(record.measurement_id);
  const approvals = [GLOBAL_SCOPE, model].map((scope) => [scope, values.get(bytesToHex(approvalKey(scope, mid)))]);
  if (approvals.some(([, v]) => v === undefined)) {
    throw new VerifyError("proof", "the answer does not prove the measurement's approvals");
  }
  const scope = (approvals.find(([, v]) => v.length) || [null])[0];
  const required = (policy && policy.gpu_required) || [];
  const gpus = record.gpus || [];
  const gpuRequired = required.includes(GLOBAL_SCOPE) || required.includes(model);
  const judged = { record, model, scope, gpuRequired, platform: record.format, gpus, dev: isDev(record), ok: true };
  if (scope === null) {
    return {
      ...judged,
      ok: false,
      step: "approval",
      reason: `measurement ${mid} of enclave key ${key} is not approved for model '${model}' nor for every model ("*") on chain: revoked, or never approved`,
    };
  }
  if (gpuRequired && !gpus.length) {
    return {
      ...judged,
      ok: false,
      step: "gpu required",
      reason: `model '${model}' requires GPU evidence (TEE policy gpu_required) and enclave key ${key} was attested without a GPU report`,
    };
  }
  return judged;
}
