/** One page of a list: `items` and the cursor of the next page (`null` on the last). */
export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}

/**
 * All pages of a list, fetched one at a time as they are consumed.
 *
 * `for await (const item of list)` goes through every item of every page;
 * `for await (const page of list.pages())` through the pages themselves. Each iteration
 * starts again from the first page.
 */
export class Paginated<T> implements AsyncIterable<T> {
  readonly #fetchPage: (cursor: string | undefined) => Promise<Page<T>>;
  readonly #firstCursor: string | undefined;

  /** `fetchPage(cursor)` answers one page; `firstCursor` is where to start. */
  constructor(fetchPage: (cursor: string | undefined) => Promise<Page<T>>, firstCursor?: string) {
    this.#fetchPage = fetchPage;
    this.#firstCursor = firstCursor;
  }

  /** Every page, in order, until one has no `next_cursor`. */
  async *pages(): AsyncGenerator<Page<T>, void, undefined> {
    let cursor = this.#firstCursor;
    for (;;) {
      const page = await this.#fetchPage(cursor);
      yield page;
      // An empty page ends the list too, so a cursor that does not advance cannot loop.
      if (!page.next_cursor || page.items.length === 0) return;
      cursor = page.next_cursor;
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    for await (const page of this.pages()) {
      yield* page.items;
    }
  }

  /** Every item of every page, in one array (mind the size of large lists). */
  async toArray(): Promise<T[]> {
    const all: T[] = [];
    for await (const item of this) all.push(item);
    return all;
  }
}
