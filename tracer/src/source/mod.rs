//! Stage 2, read: context that does not come through the ring buffer, read from the
//! host itself (namespaces, sockets and their owners from /proc and sock_diag,
//! firewall rulesets). Uses `base` and `kernel`.
pub mod firewall;
pub mod netns;
