//! Image service: registry client, content store, overlay snapshots and image records.

pub mod config;

pub use config::{HostConfig, MirrorConfig, RegistryConfig};
