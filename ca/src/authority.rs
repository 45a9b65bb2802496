//! placeholder: authority
