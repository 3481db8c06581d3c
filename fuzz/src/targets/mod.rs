//! One module per fuzz target; each has `run(data)`.

pub mod acl;
pub mod basic;
pub mod bearer;
pub mod challenge;
pub mod config;
pub mod digest;
pub mod htpasswd;
pub mod immutable_tags;
pub mod manifest;
pub mod name;
pub mod query;
pub mod range;
pub mod route;
pub mod scope;
pub mod trusted_proxies;
