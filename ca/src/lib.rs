//! Warden's certificate authority: root and rotating intermediate signing CAs, X.509-SVID and
//! JWT-SVID issuance, the agent API (gRPC over TLS), the admin API (Unix socket), the bundle
//! endpoint, health and metrics, and the datastore behind them (sqlx: SQLite or PostgreSQL).

// Owned by the datastore/admin work:
pub mod admin;
pub mod datastore;
// Owned by the authority/server work:
pub mod agent_api;
pub mod authority;
pub mod bundle_endpoint;
pub mod config;
pub mod federation;
pub mod http;
pub mod server;
