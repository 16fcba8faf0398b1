//! Stage 2, read: context that does not come through the ring buffer, read from the
//! host itself (namespaces, sockets and their owners from /proc and sock_diag,
//! firewall rulesets, exits of listeners' owners, the workloads processes run in,
//! what a ring-buffer record cannot hold), and the context records all of it
//! becomes. Live only: a replay reads these records from the capture. Uses `base`
//! and `kernel`.
pub mod conntrack;
pub mod context;
pub mod exits;
pub mod firewall;
pub mod live;
pub mod netns;
pub mod workload;
