//! placeholder: http
