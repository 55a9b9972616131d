//! Single flight: concurrent callers for one connection share one refresh.
