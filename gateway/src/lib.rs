//! Gatehouse: a governance and observability gateway for estates of
//! low-code apps, built on Pingora. `docs/architecture.md` describes the
//! whole; the modules, by domain:
//!
//! - [`pipeline`]: the request path, every phase and decision, whichever
//!   engine carries a request; [`proxy`]: the engines (Pingora's proxy,
//!   the lean HTTP/1.1 loop, HTTP/2, the buffered forwarder), which only
//!   move bytes;
//! - [`error`]: the gateway's own answers and every mapping of them;
//! - [`source`] and [`policy`]: the board's files, compiled into an
//!   immutable [`policy::Bundle`]; [`runtime`]: the active bundle behind
//!   `arc-swap`;
//! - [`routing`], [`identity`], [`limits`], [`contract`]: what the phases
//!   consult (routes and instances, consumers, limits and quotas, API
//!   contracts);
//! - [`telemetry`]: the wide event, the ClickHouse sink and spool, the
//!   schema and reports;
//! - [`governance`]: diff, review, audit, the control plane and the fleet
//!   follower; [`admin`]: the admin listener;
//! - [`server`]: the process and its services.

pub mod admin;
pub mod capacity;
pub mod contract;
pub mod error;
pub mod governance;
pub mod identity;
pub mod limits;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod source;
pub mod telemetry;
