//! The admin API over a real Unix socket (filled in with the admin service).
