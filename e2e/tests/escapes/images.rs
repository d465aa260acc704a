//! Hostile images and registries: tar headers, layer bombs, credentials.
