//! Multi-device simulator (skeleton). It will drive real engines against a
//! real relay through a network that can drop, delay, duplicate, reorder and
//! partition, reusing the sans-IO sync state machines of `engine` and `relay`.
