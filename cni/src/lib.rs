//! Pod networking: Berth's built-in bridge network and the CNI plugin executor.

pub mod cidr;
pub mod config;

pub use cidr::{Cidr, CidrError};
pub use config::{NetworkConfig, NetworkMode};
