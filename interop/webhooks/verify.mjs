// Checks tokenwarden's webhook signatures with an independent implementation: the npm
// `standardwebhooks` library (pinned in package.json, locked in package-lock.json).
//
// Reads JSON lines on stdin, one message each:
//   {"secret": "whsec_...", "headers": {"webhook-id": ..., "webhook-timestamp": ...,
//    "webhook-signature": ...}, "body": "..."}
// and prints, per line and in order, `ok` when the library accepts the message or
// `fail: <reason>` when it does not (a bad line is a `fail` too, so the count always
// matches). The library also checks the timestamp: it must be within 5 minutes of now.
import { createInterface } from "node:readline";
import { Webhook } from "standardwebhooks";

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (line.trim() === "") continue;
  try {
    const { secret, headers, body } = JSON.parse(line);
    if (typeof body !== "string") throw new Error("body must be a string");
    // jsonParse: false checks the signature only; the body need not be JSON.
    new Webhook(secret).verify(body, headers, { jsonParse: false });
    console.log("ok");
  } catch (error) {
    console.log(`fail: ${String(error?.message ?? error).replace(/\s+/g, " ")}`);
  }
}
