//! The dataset release registry: storage of releases and artifacts, the
//! lifecycle service, and its HTTP routes (admin and public).

pub mod admin;
pub mod artifacts;
pub mod public;
pub mod range;
pub mod refusals;
pub mod repository;
pub mod service;
