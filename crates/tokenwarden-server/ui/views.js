// The dashboard's pages. Each view is `async (root, { parts, params, go, say })`: it reads
// what it needs from the /v1 API, appends its content to `root`, and throws what it could
// not load (the shell shows that, or asks for the key again on a 401).

import { api, seg, ApiError } from './api.js';
import { h, field, select, table, badge, when } from './dom.js';

const PAGE_SIZES = ['10', '25', '50', '100'];
const EVENT_TYPES = [
  'connection.created', 'connection.reconnected', 'connection.refresh_failing',
  'connection.needs_reconnect', 'connection.recovered', 'connection.deleted',
  'provider.circuit_opened', 'provider.circuit_closed', 'connect_session.failed', 'webhook.test',
];

/** `#/{view}?{query}` with the non-empty values of `values`. */
function hashFor(view, values) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) {
    if (value) query.set(name, value);
  }
  const text = query.toString();
  return text ? `#/${view}?${text}` : `#/${view}`;
}

function connectionHash(c) {
  return `#/connection/${seg(c.user_id)}/${seg(c.provider)}/${seg(c.account_id)}`;
}

function connectionPath(c) {
  return `users/${seg(c.user_id)}/connections/${seg(c.provider)}/${seg(c.account_id)}`;
}

function statusBadge(status) {
  return status === 'active' ? badge('active', 'ok')
    : status === 'needs_reconnect' ? badge('needs reconnect', 'bad')
      : badge(status, 'neutral');
}

/** How a connection is doing: the word says it, the colour only repeats it. */
function healthBadge(c) {
  if (c.status === 'needs_reconnect') return badge('user must reconnect', 'bad');
  if (c.consecutive_failures > 0) {
    return badge(`failing: ${c.consecutive_failures} in a row`, 'warn');
  }
  if (c.expires_at && new Date(c.expires_at).getTime() < Date.now()) {
    return badge(c.has_refresh_token ? 'expired: refreshes on next use' : 'expired', 'warn');
  }
  return badge('healthy', 'ok');
}

function breakerBadge(breaker) {
  const state = breaker?.state ?? 'unknown';
  return state === 'closed' ? badge('closed', 'ok')
    : state === 'open' ? badge('open', 'bad')
      : state === 'half_open' ? badge('half open', 'warn')
        : badge(state, 'neutral');
}

/** A delivery's last answer: its error (which names the status), else the status alone. */
function lastAnswer(d) {
  if (d.last_error) return d.last_error;
  return d.last_status ? `HTTP ${d.last_status}` : '—';
}

function errorText(lastError) {
  return lastError ? `${lastError.code}: ${lastError.message}` : '—';
}

/** The page's heading, focusable so a new page can take the focus. */
function title(text) {
  return h('h1', { tabindex: -1 }, text);
}

function pager(view, values, cursor, nextCursor) {
  const links = [];
  if (cursor) links.push(h('a', { href: hashFor(view, { ...values, cursor: '' }) }, 'First page'));
  if (nextCursor) links.push(h('a', { href: hashFor(view, { ...values, cursor: nextCursor }) }, 'Next page'));
  return links.length ? h('nav', { class: 'pager', 'aria-label': 'Pages' }, links) : null;
}

async function providerList() {
  return (await api('providers')).providers ?? [];
}

async function connections(root, { params, go }) {
  const values = {
    provider: params.get('provider') ?? '',
    status: params.get('status') ?? '',
    user_id: params.get('user_id') ?? '',
    limit: PAGE_SIZES.includes(params.get('limit')) ? params.get('limit') : '25',
  };
  const cursor = params.get('cursor') ?? '';
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries({ ...values, cursor })) {
    if (value) query.set(name, value);
  }
  const [providers, page] = await Promise.all([providerList(), api(`connections?${query}`)]);

  const provider = select('filter-provider',
    [['', 'Any provider'], ...providers.map((p) => [p.name, p.display_name ? `${p.name} (${p.display_name})` : p.name])],
    values.provider);
  const status = select('filter-status',
    [['', 'Any status'], ['active', 'active'], ['needs_reconnect', 'needs_reconnect']], values.status);
  const user = h('input', { id: 'filter-user', name: 'user_id', type: 'search', value: values.user_id, autocomplete: 'off' });
  const size = select('filter-limit', PAGE_SIZES.map((n) => [n, n]), values.limit);
  const form = h('form', { class: 'filters', 'aria-label': 'Filter connections' },
    field('Provider', provider), field('Status', status), field('User id', user), field('Per page', size),
    h('button', { type: 'submit' }, 'Apply filters'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go(hashFor('connections', {
      provider: provider.value, status: status.value, user_id: user.value.trim(), limit: size.value,
    }));
  });

  const items = page.items ?? [];
  const filtered = ['provider', 'status', 'user_id'].filter((name) => values[name])
    .map((name) => `${name} ${values[name]}`).join(', ');
  const caption = `Connections${filtered ? ` (${filtered})` : ''}: ${items.length} on this page`;
  root.append(title('Connections'), form);
  if (items.length === 0) {
    root.append(h('p', { class: 'empty' }, filtered ? 'No connection matches these filters.' : 'No connections yet.'));
  } else {
    root.append(table(caption,
      ['User', 'Provider', 'Account', 'Status', 'Health', 'Expires', 'Last refresh', 'Last error'],
      items.map((c) => [
        c.user_id,
        c.provider,
        h('a', { href: connectionHash(c) }, c.account_id),
        statusBadge(c.status),
        healthBadge(c),
        { cell: when(c.expires_at), class: 'time' },
        { cell: when(c.last_refreshed_at), class: 'time' },
        { cell: errorText(c.last_error), class: 'error' },
      ])));
  }
  const more = pager('connections', values, cursor, page.next_cursor);
  if (more) root.append(more);
}

async function connection(root, { parts }) {
  if (parts.length !== 3) throw new Error('a connection is #/connection/{user}/{provider}/{account}');
  const [user_id, provider, account_id] = parts;
  const key = { user_id, provider, account_id };
  let view;
  let events;
  try {
    [view, events] = await Promise.all([
      api(connectionPath(key)),
      api(`${connectionPath(key)}/events?limit=50`),
    ]);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      root.append(title('No such connection'),
        h('p', {}, `${user_id} has no ${provider} connection for account ${account_id}. `,
          h('a', { href: '#/connections' }, 'Back to connections'), '.'));
      return;
    }
    throw err;
  }
  const reconnect = hashFor('connect', { user_id, provider, account_id });
  const facts = h('dl', { class: 'facts' },
    h('dt', {}, 'User'), h('dd', {}, view.user_id),
    h('dt', {}, 'Provider'), h('dd', {}, view.provider),
    h('dt', {}, 'Account'), h('dd', {}, view.account_id),
    h('dt', {}, 'Status'), h('dd', {}, statusBadge(view.status), ' ', healthBadge(view)),
    h('dt', {}, 'Expires'), h('dd', {}, when(view.expires_at)),
    h('dt', {}, 'Refresh token'), h('dd', {}, view.has_refresh_token
      ? ['stored', view.refresh_expires_at ? ['; expires ', when(view.refresh_expires_at)] : '']
      : 'none'),
    h('dt', {}, 'Last refresh'), h('dd', {}, when(view.last_refreshed_at)),
    h('dt', {}, 'Failures in a row'), h('dd', {}, String(view.consecutive_failures)),
    h('dt', {}, 'Last error'), h('dd', {}, view.last_error
      ? [h('span', { class: 'mono' }, view.last_error.code), ': ', view.last_error.message,
        view.last_error.provider_error
          ? [' — provider said ', h('span', { class: 'mono' }, view.last_error.provider_error)]
          : '',
        ' (', when(view.last_error.at), ')']
      : '—'),
    h('dt', {}, 'Scopes'), h('dd', {}, view.scopes?.length ? view.scopes.join(' ') : '—'),
    h('dt', {}, 'Created'), h('dd', {}, when(view.created_at)),
    h('dt', {}, 'Updated'), h('dd', {}, when(view.updated_at)),
    h('dt', {}, 'Metadata'), h('dd', {}, h('pre', { class: 'json mono' }, JSON.stringify(view.metadata ?? {}, null, 2))));

  const items = events.items ?? [];
  const history = [h('h2', {}, 'Recent events')];
  if (!events.recording) {
    history.push(h('p', { class: 'note' }, items.length
      ? 'Events are not being recorded now: no webhook endpoint is configured. These are from when one was.'
      : 'No events: this server records connection events only while webhook endpoints are configured ([webhooks.endpoints.NAME]).'));
  }
  if (items.length) {
    history.push(table(`${items.length} most recent events, newest first`,
      ['Time', 'Event', 'Status (version)', 'Error'],
      items.map((e) => [
        { cell: when(e.timestamp), class: 'time' },
        h('span', { class: 'mono' }, e.type),
        e.data?.status ? `${e.data.status}${e.data.version === undefined ? '' : ` (v${e.data.version})`}` : '—',
        { cell: e.data?.error ? `${e.data.error.code}: ${e.data.error.message}` : '—', class: 'error' },
      ])));
  } else if (events.recording) {
    history.push(h('p', { class: 'empty' }, 'No events recorded for this connection yet.'));
  }

  root.append(
    title(`${view.user_id} · ${view.provider} · ${view.account_id}`),
    view.status === 'needs_reconnect'
      ? h('p', { class: 'problem' }, 'This connection needs its user: refreshing failed for good. Send the user a reconnect link.')
      : null,
    h('p', { class: 'actions' },
      h('a', { href: '#/connections' }, 'All connections'),
      h('a', { href: reconnect }, 'Create reconnect link')),
    h('div', { class: 'columns' }, h('section', { 'aria-label': 'Connection' }, facts), h('section', { 'aria-label': 'Recent events' }, history)));
}

async function providers(root) {
  const list = await providerList();
  root.append(title('Providers'));
  if (list.length === 0) {
    root.append(h('p', { class: 'empty' }, 'No provider is configured.'));
    return;
  }
  root.append(table(`${list.length} configured providers`,
    ['Provider', 'Kind', 'Source', 'Grant', 'Circuit breaker', 'Breaker detail', 'Connections'],
    list.map((p) => [
      p.display_name ? [p.name, h('br'), h('span', { class: 'hint' }, p.display_name)] : p.name,
      p.kind,
      p.catalog ? `${p.source} (${p.catalog})` : p.source,
      p.grant,
      breakerBadge(p.breaker),
      p.breaker?.state === 'open'
        ? `calls fail fast; a probe in ${p.breaker.retry_after_s ?? '?'} s`
        : p.breaker?.consecutive_failures ? `${p.breaker.consecutive_failures} failures in a row` : '—',
      p.grant === 'client_credentials' ? '—' : h('span', { class: 'actions' },
        h('a', { href: hashFor('connections', { provider: p.name }), 'aria-label': `All ${p.name} connections` }, 'all'),
        h('a', {
          href: hashFor('connections', { provider: p.name, status: 'needs_reconnect' }),
          'aria-label': `${p.name} connections needing reconnect`,
        }, 'needing reconnect')),
    ])));
}

async function deliveries(root, { params, go, say }) {
  const values = {
    status: params.get('status') ?? '',
    type: params.get('type') ?? '',
    endpoint: params.get('endpoint') ?? '',
    limit: PAGE_SIZES.includes(params.get('limit')) ? params.get('limit') : '25',
  };
  const cursor = params.get('cursor') ?? '';
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries({ ...values, cursor })) {
    if (value) query.set(name, value);
  }
  const page = await api(`webhooks/deliveries?${query}`);

  const status = select('filter-delivery-status',
    [['', 'Any status'], ['pending', 'pending'], ['delivered', 'delivered'], ['failed', 'failed']], values.status);
  const type = select('filter-type', [['', 'Any event'], ...EVENT_TYPES.map((t) => [t, t])], values.type);
  const endpoint = h('input', { id: 'filter-endpoint', name: 'endpoint', type: 'search', value: values.endpoint, autocomplete: 'off' });
  const size = select('filter-delivery-limit', PAGE_SIZES.map((n) => [n, n]), values.limit);
  const form = h('form', { class: 'filters', 'aria-label': 'Filter deliveries' },
    field('Status', status), field('Event type', type), field('Endpoint', endpoint), field('Per page', size),
    h('button', { type: 'submit' }, 'Apply filters'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go(hashFor('deliveries', {
      status: status.value, type: type.value, endpoint: endpoint.value.trim(), limit: size.value,
    }));
  });

  const retry = async (button, id) => {
    button.disabled = true;
    try {
      await api(`webhooks/deliveries/${seg(id)}/retry`, { method: 'POST' });
      say(`Delivery ${id} is queued again: it is sent now.`, 'ok');
      go(window.location.hash || '#/deliveries');
    } catch (err) {
      button.disabled = false;
      say(`Could not retry ${id}: ${err instanceof ApiError ? err.describe() : err.message}`, 'error');
    }
  };

  const items = page.items ?? [];
  root.append(title('Webhook deliveries'), form);
  if (items.length === 0) {
    root.append(h('p', { class: 'empty' }, 'No delivery matches. Deliveries exist only while webhook endpoints are configured.'));
  } else {
    root.append(table(`Deliveries, newest first: ${items.length} on this page`,
      ['Delivery', 'Event', 'Endpoint', 'Status', 'Action', 'Attempts', 'Last answer', 'Next attempt', 'Created'],
      items.map((d) => {
        let action = '—';
        if (d.status === 'failed') {
          action = h('button', { type: 'button', class: 'small', 'aria-label': `Retry delivery ${d.id}` }, 'Retry');
          action.addEventListener('click', () => retry(action, d.id));
        }
        return [
          h('span', { class: 'mono' }, d.id),
          h('span', { class: 'mono' }, d.type),
          d.endpoint,
          d.status === 'delivered' ? badge('delivered', 'ok')
            : d.status === 'failed' ? badge('failed', 'bad') : badge('pending', 'info'),
          action,
          String(d.attempts),
          { cell: lastAnswer(d), class: 'error' },
          { cell: when(d.next_attempt_at), class: 'time' },
          { cell: when(d.created_at), class: 'time' },
        ];
      })));
  }
  const more = pager('deliveries', values, cursor, page.next_cursor);
  if (more) root.append(more);
}

async function connect(root, { params, say }) {
  const list = (await providerList()).filter((p) => p.grant !== 'client_credentials' && p.authorization_url);
  const userId = h('input', { id: 'connect-user', name: 'user_id', required: true, autocomplete: 'off', value: params.get('user_id') ?? '' });
  const provider = select('connect-provider', list.map((p) => [p.name, p.display_name ?? p.name]), params.get('provider') ?? '');
  const returnUrl = h('input', {
    id: 'connect-return', name: 'return_url', type: 'url', required: true, autocomplete: 'url',
    value: params.get('return_url') ?? sessionStorage.getItem('tokenwarden.returnUrl') ?? '',
  });
  const accountId = h('input', { id: 'connect-account', name: 'account_id', autocomplete: 'off', value: params.get('account_id') ?? '' });
  const scopes = h('input', { id: 'connect-scopes', name: 'scopes', autocomplete: 'off' });
  const button = h('button', { type: 'submit' }, 'Create connect link');
  const result = h('div', { class: 'result' });
  const form = h('form', { class: 'panel', 'aria-label': 'Create a connect link' },
    field('User id', userId, 'Your application\'s id for the user who will connect.'),
    field('Provider', provider),
    field('Return URL', returnUrl, 'Where the browser goes afterwards: one of [connect] return_urls.'),
    field('Account id (optional)', accountId, 'Set it to reconnect an existing connection (and for providers that do not say which account signed in).'),
    field('Scopes (optional)', scopes, 'Space-separated; the provider\'s defaults otherwise.'),
    h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = { user_id: userId.value.trim(), provider: provider.value, return_url: returnUrl.value.trim() };
    if (accountId.value.trim()) body.account_id = accountId.value.trim();
    const wanted = scopes.value.split(/\s+/).filter(Boolean);
    if (wanted.length) body.scopes = wanted;
    for (const input of [userId, returnUrl, accountId, scopes]) input.removeAttribute('aria-invalid');
    button.disabled = true;
    try {
      const session = await api('connect/sessions', { method: 'POST', body });
      sessionStorage.setItem('tokenwarden.returnUrl', body.return_url);
      const link = h('input', { id: 'connect-link', readonly: true, value: session.connect_url, class: 'mono' });
      const copy = h('button', { type: 'button', class: 'secondary' }, 'Copy link');
      copy.addEventListener('click', async () => {
        link.select();
        try {
          await navigator.clipboard.writeText(link.value);
          say('The connect link is copied.', 'ok');
        } catch {
          say('Copying was not allowed here: the link is selected, copy it with the keyboard.', 'info');
        }
      });
      result.replaceChildren(
        h('h2', {}, session.reconnect ? 'Reconnect link' : 'Connect link'),
        field('Connect link', link, 'Send it to the user: it works once, in one browser.'),
        h('div', { class: 'actions' }, copy),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Session'), h('dd', { class: 'mono', id: 'connect-session' }, session.id),
          h('dt', {}, 'Expires'), h('dd', {}, when(session.expires_at))));
      say(`Connect link created for ${body.user_id}.`, 'ok');
      link.focus();
    } catch (err) {
      const named = { user_id: userId, return_url: returnUrl, account_id: accountId, scopes };
      const input = named[err.details?.field];
      if (input) input.setAttribute('aria-invalid', 'true');
      say(`Could not create the link: ${err instanceof ApiError ? err.describe() : err.message}`, 'error');
      (input ?? button).focus();
    } finally {
      button.disabled = false;
    }
  });
  root.append(title('Create connect link'));
  if (list.length === 0) {
    root.append(h('p', { class: 'empty' }, 'No provider can be connected: a provider needs an authorization_url and a client_id.'));
    return;
  }
  root.append(form, result);
}

export const VIEWS = {
  connections,
  connection,
  providers,
  deliveries,
  connect,
};
