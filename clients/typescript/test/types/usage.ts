// Compiled (never run) by test/package.test.mjs with `tsc --noEmit`: the published types
// accept what the API accepts and catch what it refuses. Each `@ts-expect-error` must meet an
// error, so a type that became too loose fails the compile as well as one too strict.
import {
  Tokenwarden,
  TokenwardenError,
  verifyWebhook,
  type Connection,
  type WebhookEvent,
} from "@tokenwarden/client";

const tw = new Tokenwarden({ baseUrl: "http://127.0.0.1:8420", apiKey: "key" });
const ref = { user_id: "u", provider: "google", account_id: "a" };

export async function usage(): Promise<void> {
  const token = await tw.getAccessToken(ref);
  const header: string = token.authorization;
  const expires: Date | null = token.expiresAt;

  await tw.importConnection(ref, { access_token: "t", expires_in: 3600, scopes: ["x"] });
  // @ts-expect-error access_token is required
  await tw.importConnection(ref, { expires_in: 3600 });
  // @ts-expect-error an empty body is not an import
  await tw.importConnection(ref, {});
  // @ts-expect-error expires_in is a number of seconds
  await tw.importConnection(ref, { access_token: "t", expires_in: "3600" });

  await tw.refresh(ref, { max_retries: 1 });
  // @ts-expect-error retry options are the API's names
  await tw.refresh(ref, { maxRetries: 1 });

  for await (const connection of tw.listConnections({ status: "needs_reconnect" })) {
    const status: "active" | "needs_reconnect" = connection.status;
    // A listed connection is a reference to itself.
    await tw.getConnection(connection);
    void status;
  }
  // @ts-expect-error status is active or needs_reconnect
  tw.listConnections({ status: "broken" });

  const session = await tw.getConnectSession("cs_1");
  // @ts-expect-error a session's status is one of four
  const impossible: typeof session.status = "opened";
  void impossible;

  for await (const delivery of tw.deliveries({ status: "failed", type: "connection.needs_reconnect" })) {
    await tw.retryDelivery(delivery.id);
  }

  try {
    await tw.getAccessToken(ref);
  } catch (error) {
    if (error instanceof TokenwardenError && error.reconnect) {
      const code: string = error.code;
      const wait: number | null = error.retryAfter;
      void code;
      void wait;
    }
  }

  const event: WebhookEvent = await verifyWebhook(["whsec_a", "whsec_b"], new Headers(), "{}");
  if (event.type === "connection.needs_reconnect") {
    const user: string = event.data.user_id;
    void user;
  } else if (event.type === "provider.circuit_opened") {
    // @ts-expect-error provider events carry no user
    void event.data.user_id;
  }
  const view: Connection | undefined = undefined;
  void view;
  void header;
  void expires;
}
