//! placeholder: agent_api
