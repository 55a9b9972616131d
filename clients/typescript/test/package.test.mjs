// The package as committed: its generated types and its dist/ are what the generator and tsc
// make of openapi.json and src/ (so neither can drift), its types catch misuse, it installs
// from the repository, and dist/ needs nothing but what browsers have too.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { generateTypes } from "../scripts/schema.mjs";

const packageDir = fileURLToPath(new URL("..", import.meta.url));
const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");

/** Every file under `dir`, as paths relative to it, sorted. */
function files(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
}

function run(command, args, options = {}) {
  return execFileSync(command, args, { encoding: "utf8", stdio: "pipe", ...options });
}

describe("the package", () => {
  it("src/schema.ts is what openapi-typescript makes of openapi.json", async () => {
    const document = readFileSync(join(packageDir, "openapi.json"), "utf8");
    const expected = await generateTypes(document);
    const committed = readFileSync(join(packageDir, "src", "schema.ts"), "utf8");
    assert.ok(
      committed === expected,
      "src/schema.ts is out of date: run `npm run generate` in clients/typescript and commit it",
    );
  });

  it("dist/ is what tsc makes of src/", () => {
    const out = mkdtempSync(join(tmpdir(), "tw-client-dist-"));
    try {
      run(process.execPath, [tsc, "-p", "tsconfig.json", "--outDir", out], { cwd: packageDir });
      const dist = join(packageDir, "dist");
      assert.deepEqual(files(dist), files(out), "dist/ has other files than a build");
      for (const file of files(out)) {
        assert.ok(
          readFileSync(join(dist, file), "utf8") === readFileSync(join(out, file), "utf8"),
          `dist/${file} is out of date: run \`npm run build\` in clients/typescript and commit dist/`,
        );
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("its types accept the API's shapes and refuse others (test/types/usage.ts)", () => {
    try {
      run(process.execPath, [tsc, "-p", "test/types/tsconfig.json"], { cwd: packageDir });
    } catch (error) {
      assert.fail(`tsc found errors:\n${error.stdout}${error.stderr}`);
    }
  });

  it("dist/ uses nothing Node-only, so it runs in browsers", () => {
    const dist = join(packageDir, "dist");
    for (const file of files(dist).filter((f) => f.endsWith(".js"))) {
      const code = readFileSync(join(dist, file), "utf8");
      for (const imported of code.matchAll(/\bfrom\s+"([^"]+)"|\bimport\(\s*"([^"]+)"/g)) {
        const specifier = imported[1] ?? imported[2];
        assert.ok(specifier.startsWith("./"), `${file} imports ${specifier}`);
      }
      for (const nodeOnly of [/\brequire\(/, /\bprocess\./, /\bBuffer\b/, /\b__dirname\b/]) {
        assert.ok(!nodeOnly.test(code), `${file} uses ${nodeOnly}`);
      }
    }
  });

  it("installs from the repository with npm, offline, and imports", () => {
    const work = mkdtempSync(join(tmpdir(), "tw-client-install-"));
    try {
      const packed = JSON.parse(
        run("npm", ["pack", "--json", "--pack-destination", work], { cwd: packageDir }),
      );
      const packedFiles = packed[0].files.map((f) => f.path);
      for (const needed of ["dist/index.js", "dist/index.d.ts", "dist/schema.d.ts", "README.md"]) {
        assert.ok(packedFiles.includes(needed), `${needed} not packed: ${packedFiles}`);
      }
      assert.ok(!packedFiles.some((f) => f.startsWith("test/") || f.startsWith("node_modules/")));
      const app = join(work, "app");
      run("mkdir", ["-p", app]);
      writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", type: "module" }));
      const flags = ["--offline", "--no-audit", "--no-fund", "--loglevel=error"];
      for (const source of [join(work, packed[0].filename), packageDir]) {
        run("npm", ["install", ...flags, source], { cwd: app });
        const exported = run(
          process.execPath,
          [
            "--input-type=module",
            "-e",
            'const m = await import("@tokenwarden/client"); console.log(Object.keys(m).sort().join(","))',
          ],
          { cwd: app },
        ).trim();
        assert.equal(
          exported,
          "AccessToken,DEFAULT_TOLERANCE_SECONDS,Paginated,Tokenwarden,TokenwardenError," +
            "TokenwardenNetworkError,WebhookVerificationError,verifyWebhook",
          `installed from ${source}`,
        );
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
