// Runs the explorer's judgement of a tee receipt's enclave (src/tee.js) over cases written by the
// Python tests (a JSON file: argv[2]; each {name, key, model, values: {hex key: hex value}, policy})
// and prints one JSON line per case: {"name", "ok", "step", "reason", "scope", "platform", "gpus",
// "dev", "describe", "error"}. The Python side decides what each case must give.
import { readFileSync } from "node:fs";
import { VerifyError, hexToBytes } from "../src/lightclient.js";
import { describePlatform, judgeEnclave } from "../src/tee.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
for (const c of cases) {
  const out = { name: c.name, ok: false, step: null, reason: null, error: null };
  try {
    const values = new Map(Object.entries(c.values).map(([k, v]) => [k, hexToBytes(v)]));
    const judged = judgeEnclave({ key: c.key, model: c.model, values, policy: c.policy });
    Object.assign(out, {
      ok: judged.ok,
      step: judged.step || null,
      reason: judged.reason || null,
      scope: judged.scope,
      platform: judged.platform,
      gpus: judged.gpus,
      dev: judged.dev,
      describe: describePlatform(judged.platform, judged.gpus),
    });
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    out.step = err.step;
    out.error = err.message;
  }
  console.log(JSON.stringify(out));
}
