//! Dataset release bootstrap on the device (issue #10): fetch and verify
//! manifests, download artifacts resumably, activate atomically, roll back.

pub mod activation;
pub mod download;
pub mod manager;
pub mod registry;
