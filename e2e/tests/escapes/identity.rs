//! Identity: users and groups read from the image, capabilities, seccomp.
