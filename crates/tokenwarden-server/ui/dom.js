// Building the page: elements from plain values, never from HTML strings. Every string a
// user or the server controls goes in as a text node (or an attribute value), so nothing it
// holds is ever parsed as markup.

/**
 * `h('a', { href: '#/x', class: 'y', onclick: f }, 'text', child)`: an element with
 * attributes, listeners (`on…`) and children (strings become text nodes; null/false skip).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'value') {
      el.value = String(value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A labelled form field: `<div class=field><label for=id>…</label>{control}{hint}</div>`. */
export function field(label, control, hint) {
  const hintId = hint ? `${control.id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' },
    h('label', { for: control.id }, label),
    control,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null);
}

/** A `<select>` whose options are `[value, label]` pairs, `selected` chosen. */
export function select(id, options, selected) {
  return h('select', { id, name: id },
    options.map(([value, label]) => {
      const option = h('option', { value }, label);
      option.selected = value === selected;
      return option;
    }));
}

/**
 * A table with a caption, column headers and rows of cells (a cell is a node, a string, or
 * `{ cell, class }`), in a scrollable region that keyboard users can reach.
 */
export function table(caption, headers, rows) {
  const body = h('tbody', {}, rows.map((cells) => h('tr', {},
    cells.map((cell) => (cell && typeof cell === 'object' && 'cell' in cell
      ? h('td', { class: cell.class }, cell.cell)
      : h('td', {}, cell))))));
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((name) => h('th', { scope: 'col' }, name)))),
      body));
}

export function badge(text, tone) {
  return h('span', { class: `badge ${tone}` }, text);
}

/** An RFC 3339 time as "2026-11-30 14:53:07 UTC (in 5 min)", or "—" when absent. */
export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const shown = `${date.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
  return h('span', { class: 'when' },
    h('time', { datetime: iso, title: iso }, shown), ' ',
    h('span', { class: 'relative' }, `(${relative(date)})`));
}

function relative(date) {
  const seconds = Math.round((date.getTime() - Date.now()) / 1000);
  const size = Math.abs(seconds);
  const [amount, unit] = size < 90 ? [size, 's']
    : size < 5400 ? [Math.round(size / 60), 'min']
      : size < 172800 ? [Math.round(size / 3600), 'h']
        : [Math.round(size / 86400), 'd'];
  return seconds >= 0 ? `in ${amount} ${unit}` : `${amount} ${unit} ago`;
}
