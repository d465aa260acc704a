//! Mounts, /dev, /proc and the runtime's own writes into the container.
