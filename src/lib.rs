//! signet-milter: a DKIM signing milter for Postfix and Sendmail.
//!
//! Data flows one way: the milter [`session`](crate::milter) asks the [`policy`] whether a message
//! may be signed and with which signatures, resolves their keys through the [`keys`] cache, and
//! streams the message through the [`sign`]ers.

pub mod authorizer;
pub mod check;
pub mod cli;
pub mod config;
pub mod connections;
pub mod dns;
pub mod dns_check;
pub mod domain;
pub mod explain;
pub mod inventory;
pub mod keys;
pub mod logging;
pub mod manpage;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod mta_check;
pub mod notify;
pub mod policy;
pub mod reply_batch;
pub mod rotation;
pub mod runtime;
pub mod server;
pub mod session;
pub mod sign;
pub mod table;
pub mod verdict;
pub mod verify;
