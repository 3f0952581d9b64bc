//! Operating the daemon: the control socket (`conntrackd flows`, `why`,
//! `drops`, `kill`, `reload`, `status`...), the event stream, the metrics
//! endpoint and the logging thread. Each runs on threads of its own and
//! reads the packet path only through [`super::shared`] and the engine.

pub mod control;
pub mod deadline;
pub mod events;
pub mod logging;
pub mod metrics;
