//! placeholder: admin
