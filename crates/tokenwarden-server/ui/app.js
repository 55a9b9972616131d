// The dashboard's shell: signing in and out, the status line, and hash routing
// (#/connections?…, #/connection/{user}/{provider}/{account}, #/providers, #/deliveries?…,
// #/connect?…). The views themselves are in views.js.

import { api, apiKey, keepApiKey, forgetApiKey, ApiError } from './api.js';
import { h, field } from './dom.js';
import { VIEWS } from './views.js';

const main = document.getElementById('main');
const statusLine = document.getElementById('status');
const nav = document.getElementById('nav');
const signOutButton = document.getElementById('sign-out');

/** Says something in the status line (a live region: screen readers announce it). */
export function say(message, kind = 'info') {
  statusLine.dataset.kind = kind;
  statusLine.textContent = message;
}

/** Where the hash points: the view's name, its path parts and its query. */
function route() {
  const raw = window.location.hash.replace(/^#\/?/, '');
  const at = raw.indexOf('?');
  const path = at < 0 ? raw : raw.slice(0, at);
  const params = new URLSearchParams(at < 0 ? '' : raw.slice(at + 1));
  let parts;
  try {
    parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = ['not-found'];
  }
  return { name: parts[0] ?? 'connections', parts: parts.slice(1), params };
}

/** Goes to `hash` (re-rendering when it is already there: "Apply" twice reloads). */
export function go(hash) {
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
}

let rendering = 0;
let shownView = null;

/** Shows what the hash names; only the newest of overlapping renders is shown. */
async function render() {
  const mine = ++rendering;
  if (!apiKey()) {
    showLogin();
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  const { name, parts, params } = route();
  const view = VIEWS[name];
  // A message belongs to the page it was said on (the first page keeps "Signed in.").
  if (shownView !== null && shownView !== name) say('');
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.section === name || (name === 'connection' && link.dataset.section === 'connections')) {
      link.setAttribute('aria-current', 'page');
    } else {
      link.removeAttribute('aria-current');
    }
  }
  main.setAttribute('aria-busy', 'true');
  const content = h('div');
  try {
    if (!view) {
      content.append(h('h1', { tabindex: -1 }, 'Not found'),
        h('p', {}, 'This dashboard has no such page. ', h('a', { href: '#/connections' }, 'Go to connections'), '.'));
    } else {
      await view(content, { parts, params, go, say });
    }
  } catch (err) {
    if (mine !== rendering) return;
    if (err instanceof ApiError && err.status === 401) {
      signOut('The server no longer accepts this API key: sign in again.', 'error');
      return;
    }
    content.append(h('div', { class: 'problem', role: 'alert' },
      err instanceof ApiError ? `Could not load this page: ${err.describe()}` : `Could not load this page: ${err.message}`));
  }
  if (mine !== rendering) return;
  main.replaceChildren(content);
  main.setAttribute('aria-busy', 'false');
  // Which hash this content shows: lets a reader (or a test) tell a finished page apart.
  main.dataset.shown = window.location.hash;
  if (shownView !== name) {
    // A new page: move focus to its heading, as a full page load would.
    content.querySelector('h1')?.focus();
    shownView = name;
  }
}

function showLogin(message, kind) {
  nav.hidden = true;
  signOutButton.hidden = true;
  shownView = null;
  const input = h('input', {
    id: 'api-key', type: 'password', autocomplete: 'off',
    spellcheck: 'false', required: true,
  });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'panel login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title', tabindex: -1 }, 'Sign in'),
    field('API key', input,
      'One of this server\'s [auth] api_keys. It stays in this browser tab until you sign out or close the tab, and is sent only to this server.'),
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      input.setAttribute('aria-invalid', 'true');
      say('Enter an API key.', 'error');
      input.focus();
      return;
    }
    button.disabled = true;
    say('Checking the key…');
    try {
      // Any /v1 route checks the key; this one reads nothing about users.
      await api('providers', { key });
    } catch (err) {
      button.disabled = false;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      input.select();
      if (err instanceof ApiError && err.status === 401) {
        say('The server refused this API key (UNAUTHORIZED). Check the key and try again.', 'error');
      } else {
        say(`Could not check the key: ${err instanceof ApiError ? err.describe() : err.message}`, 'error');
      }
      return;
    }
    keepApiKey(key);
    say('Signed in.', 'ok');
    render();
  });
  main.replaceChildren(form);
  main.setAttribute('aria-busy', 'false');
  main.dataset.shown = 'login';
  if (message) say(message, kind);
  input.focus();
}

function signOut(message = 'Signed out: the API key is forgotten in this tab.', kind = 'ok') {
  forgetApiKey();
  rendering += 1;
  showLogin(message, kind);
}

signOutButton.addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => render());
render();
