//! placeholder: datastore
