//! Pod sandboxes and containers.
