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
export declare class Paginated<T> implements AsyncIterable<T> {
    #private;
    /** `fetchPage(cursor)` answers one page; `firstCursor` is where to start. */
    constructor(fetchPage: (cursor: string | undefined) => Promise<Page<T>>, firstCursor?: string);
    /** Every page, in order, until one has no `next_cursor`. */
    pages(): AsyncGenerator<Page<T>, void, undefined>;
    [Symbol.asyncIterator](): AsyncGenerator<T, void, undefined>;
    /** Every item of every page, in one array (mind the size of large lists). */
    toArray(): Promise<T[]>;
}
