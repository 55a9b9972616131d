-- The provider's own OAuth `error` value (`invalid_grant`, …) of a connection's last refresh
-- failure, next to the library's code and message: webhook events carry it as
-- `data.error.provider_error`, and the connection view shows it. NULL when the provider gave
-- none (a timeout, a 5xx without a body) or when the connection has no last error.
ALTER TABLE connections ADD COLUMN last_error_provider TEXT;
