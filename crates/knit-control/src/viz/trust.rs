//! `/api/identity`: the trust anchors and the issuer this control plane holds, when they expire,
//! where a trust-anchor rotation stands, and how many of the leaves it signed chain to each
//! anchor (the dashboard's trust panel).
//!
//! The identities of proxies still on an old anchor are listed (at most [`BEHIND_SHOWN`]): the
//! certificates API already names every proxy's identity, so this tells a viz caller nothing new
//! about who is meshed, only which of them a rotation waits for.

use crate::identity::{Leaf, Service};
use knit_identity::rotation::{Rotation, Step};
use serde::Serialize;

/// Expiry within this is a warning, as the shipped alert rules warn (30 days ahead).
pub const WARN_SECS: i64 = 30 * 86_400;
/// Expiry within this is critical (7 days ahead).
pub const CRITICAL_SECS: i64 = 7 * 86_400;
pub const BEHIND_SHOWN: usize = 20;

#[derive(Debug, Serialize)]
pub struct Report {
    pub issuer: Issuer,
    pub anchors: Vec<Anchor>,
    /// `steady`, `anchor_added` or `issuer_switched` (see `knit_identity::rotation`).
    pub step: &'static str,
    pub describe: String,
    pub leaves: Leaves,
    pub warn_secs: i64,
    pub critical_secs: i64,
}

#[derive(Debug, Serialize)]
pub struct Issuer {
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    pub anchor_sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Anchor {
    pub subject: String,
    pub sha256: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Whether the issuer chains to it.
    pub current: bool,
    /// Unexpired leaves this control plane signed under it.
    pub leaves: usize,
}

#[derive(Debug, Serialize)]
pub struct Leaves {
    pub total: usize,
    /// Leaves under an anchor other than the issuer's: what removing the old anchor waits for.
    pub behind: usize,
    /// The first [`BEHIND_SHOWN`] of them, soonest to expire first.
    pub behind_shown: Vec<Behind>,
    /// Whether every running proxy has certified since this control plane started (leaves signed
    /// before are unknown to it); seconds until then.
    pub complete: bool,
    pub complete_in: u64,
}

#[derive(Debug, Serialize)]
pub struct Behind {
    pub identity: String,
    pub anchor: String,
    pub not_after: i64,
}

pub fn report(service: &Service) -> Report {
    let ca = service.ca();
    let rotation = Rotation::of(&ca);
    let leaves = service.leaves.report();
    let count = |sha: &str| leaves.leaves.iter().filter(|l| l.anchor_sha256 == sha).count();
    let anchors = rotation
        .anchors
        .iter()
        .map(|a| Anchor {
            subject: a.info.subject.clone(),
            sha256: a.sha256.clone(),
            not_before: a.info.not_before.unix_timestamp(),
            not_after: a.info.not_after.unix_timestamp(),
            current: a.sha256 == rotation.current.sha256,
            leaves: count(&a.sha256),
        })
        .collect();
    let mut behind: Vec<&Leaf> = leaves.leaves.iter().filter(|l| l.anchor_sha256 != rotation.current.sha256).collect();
    behind.sort_by_key(|l| l.not_after);
    Report {
        issuer: Issuer {
            subject: ca.issuer_info.subject.clone(),
            not_after: ca.issuer_info.not_after.unix_timestamp(),
            anchor_sha256: rotation.current.sha256.clone(),
        },
        anchors,
        step: match rotation.step {
            Step::Steady => "steady",
            Step::AnchorAdded { .. } => "anchor_added",
            Step::IssuerSwitched { .. } => "issuer_switched",
        },
        describe: rotation.describe(),
        leaves: Leaves {
            total: leaves.leaves.len(),
            behind: behind.len(),
            behind_shown: behind
                .iter()
                .take(BEHIND_SHOWN)
                .map(|l| Behind { identity: l.identity.clone(), anchor: l.anchor.clone(), not_after: l.not_after })
                .collect(),
            complete: leaves.complete,
            complete_in: leaves.complete_in,
        },
        warn_secs: WARN_SECS,
        critical_secs: CRITICAL_SECS,
    }
}
