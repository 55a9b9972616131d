/**
 * All pages of a list, fetched one at a time as they are consumed.
 *
 * `for await (const item of list)` goes through every item of every page;
 * `for await (const page of list.pages())` through the pages themselves. Each iteration
 * starts again from the first page.
 */
export class Paginated {
    #fetchPage;
    #firstCursor;
    /** `fetchPage(cursor)` answers one page; `firstCursor` is where to start. */
    constructor(fetchPage, firstCursor) {
        this.#fetchPage = fetchPage;
        this.#firstCursor = firstCursor;
    }
    /** Every page, in order, until one has no `next_cursor`. */
    async *pages() {
        let cursor = this.#firstCursor;
        for (;;) {
            const page = await this.#fetchPage(cursor);
            yield page;
            // An empty page ends the list too, so a cursor that does not advance cannot loop.
            if (!page.next_cursor || page.items.length === 0)
                return;
            cursor = page.next_cursor;
        }
    }
    async *[Symbol.asyncIterator]() {
        for await (const page of this.pages()) {
            yield* page.items;
        }
    }
    /** Every item of every page, in one array (mind the size of large lists). */
    async toArray() {
        const all = [];
        for await (const item of this)
            all.push(item);
        return all;
    }
}
