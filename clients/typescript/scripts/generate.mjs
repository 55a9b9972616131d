// `npm run generate`: writes openapi.json (what `tokenwarden openapi` prints: the API's
// document for any configuration) and src/schema.ts (its types). Commit both; the tests fail
// when either is not what the current server and generator make.
//
// The binary is TOKENWARDEN_BIN when set, else `cargo run` builds and runs it.
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { generateTypes } from "./schema.mjs";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));

const options = { stdio: ["ignore", "pipe", "inherit"], maxBuffer: 64 * 1024 * 1024 };
const document = process.env.TOKENWARDEN_BIN
  ? execFileSync(process.env.TOKENWARDEN_BIN, ["openapi"], options)
  : execFileSync(
      "cargo",
      ["run", "--quiet", "--locked", "-p", "tokenwarden-server", "--bin", "tokenwarden", "--", "openapi"],
      { ...options, cwd: repoRoot },
    );
const text = document.toString("utf8");
writeFileSync(`${packageDir}/openapi.json`, text);
writeFileSync(`${packageDir}/src/schema.ts`, await generateTypes(text));
console.log("wrote openapi.json and src/schema.ts");
