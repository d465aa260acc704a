//! The node's own files: what an unprivileged node user or a pod can read or redirect.
