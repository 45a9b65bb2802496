//! Outbound listeners: local plaintext in, mutual TLS with this sidecar's SVID out, to an upstream
//! whose SPIFFE ID must be one of the expected ones.
