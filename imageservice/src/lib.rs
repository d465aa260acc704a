//! Image service: registry client, content store, overlay snapshots and image records.
//!
//! The daemon opens one [`ImageStore`] over its root directory and metadata database and
//! calls [`ImageStore::pull`], [`ImageStore::get`], [`ImageStore::rootfs_layers`] and
//! friends from the CRI handlers.

pub mod config;
mod content;
pub mod error;
pub mod manifest;
mod records;
pub mod reference;
pub mod registry;
mod snapshot;
mod store;
mod tarstream;
pub mod unpack;

#[cfg(test)]
mod testregistry;
#[cfg(test)]
mod tests;

pub use config::{HostConfig, ImageConfig, MirrorConfig, RegistryConfig};
pub use error::{Class, Classify, Error};
pub use records::Image;
pub use reference::Reference;
pub use registry::{Credentials, RetryPolicy};
pub use store::{FsUsage, GcReport, ImageStore, Pulled, StoreOptions};
