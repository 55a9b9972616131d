// The dashboard's only way to the server: the API key of this browser session, and requests
// to this server's /v1 API. URLs are relative to the page (/ui/ → ../v1/), so the key goes
// to this origin and nowhere else; a URL that would leave it is refused before any request.
// No route that answers a token (access-token) is ever called.

const KEY = 'tokenwarden.apiKey';

/** The API key typed in this tab, or null. `sessionStorage`: gone when the tab closes. */
export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function keepApiKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY);
}

/** A refused or failed request: the server's error body, or what went wrong on the way. */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** "message (CODE)", naming the field when the server named one. */
  describe() {
    const field = this.details?.field ? ` [field: ${this.details.field}]` : '';
    return `${this.message} (${this.code})${field}`;
  }
}

/** Percent-encodes one path segment (ids may hold spaces, `?`, `#`, non-ASCII). */
export const seg = encodeURIComponent;

/**
 * Calls `/v1/{path}` (path may carry a query) and returns the parsed JSON, or throws an
 * ApiError. `key` defaults to the session's key.
 */
export async function api(path, { method = 'GET', body, key = apiKey() } = {}) {
  const url = new URL(`../v1/${path}`, document.baseURI);
  if (url.origin !== window.location.origin || !url.pathname.includes('/v1/')) {
    throw new ApiError(0, 'REFUSED', 'the dashboard only calls this server\'s /v1 API');
  }
  if (/\/access-token$/.test(url.pathname)) {
    throw new ApiError(0, 'REFUSED', 'the dashboard never asks for a token');
  }
  const headers = { Accept: 'application/json', Authorization: `Bearer ${key ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      // Only the key authenticates: no cookies, no cache of answers, no redirect followed.
      credentials: 'omit',
      cache: 'no-store',
      redirect: 'error',
      referrerPolicy: 'no-referrer',
    });
  } catch (err) {
    if (err instanceof TypeError && /header/i.test(err.message)) {
      throw new ApiError(0, 'BAD_KEY', 'the API key has characters no HTTP header can carry');
    }
    throw new ApiError(0, 'NETWORK', `the server could not be reached (${err.message})`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = json?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? `HTTP_${response.status}`,
      error.message ?? `the server answered ${response.status}`,
      error.details ?? {},
    );
  }
  return json;
}
