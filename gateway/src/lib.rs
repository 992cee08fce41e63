//! Gatehouse: a governance and observability gateway for estates of
//! low-code apps, built on Pingora.
//!
//! The crate is organised by domain (see `DESIGN.md`): [`policy`] turns the
//! board's files into an immutable [`policy::Bundle`]; [`routing`] finds the
//! app, route and instance; [`proxy`] is the Pingora glue; [`runtime`] holds
//! the active bundle behind `arc-swap`; [`admin`] is the admin listener;
//! [`error`] is the one mapping from gateway errors to problem responses.

pub mod admin;
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
