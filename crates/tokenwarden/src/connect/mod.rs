//! The connect flow: obtaining a connection with the authorization-code grant and PKCE.

pub mod session;
