//! The rules every message is judged by, as pure functions (table-tested), in the order the
//! session ([`crate::session`]) applies them:
//!
//! 1. [`trust`]: may this client's mail be signed at all? ([`may_sign`])
//! 2. [`author`]: who wrote it? ([`author()`])
//! 3. [`plan`]: with which signatures? ([`plan()`])
//! 4. [`authorization`]: may this authenticated login sign for those domains? ([`static_grant`])
//!
//! Nothing else decides: the milter, `sign` and `explain` are front ends over the session.

pub mod author;
pub mod authorization;
pub mod plan;
pub mod trust;

pub use author::{Author, NoAuthor, author, author_domain, from_domains};
pub use authorization::{Denial, Grant, Login, Subject, denial, static_grant};
pub use plan::{Plan, PlannedSignature, plan, signatures_for};
pub use trust::{ClientAddr, Origin, Trust, Untrusted, may_sign};
