//! Where a trust-anchor rotation stands, read from the bundle and the issuer alone (so that a
//! directory, a cluster's ConfigMap and Secret, or cert-manager's objects all say the same):
//!
//! 1. [`Step::Steady`]: the bundle holds the one anchor the issuer chains to.
//! 2. [`Step::AnchorAdded`]: a newer anchor is in the bundle, the issuer is still under an older
//!    one. Next: once every proxy has read the bundle, switch the issuer.
//! 3. [`Step::IssuerSwitched`]: the issuer chains to the newest anchor and older ones remain.
//!    Next: once no proxy's leaf chains to an older anchor, remove them.
//!
//! "Newer" is the later `notBefore`: the anchor created for the rotation.

use crate::{
    ca::{anchor_of, Ca},
    inspect::{fingerprint, pem_certs, CertInfo},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub info: CertInfo,
    pub sha256: String,
    pub der: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Steady,
    /// `new` is in the bundle; the issuer is still under `current`.
    AnchorAdded {
        new: Box<Anchor>,
    },
    /// The issuer is under the newest anchor; `old` are still in the bundle.
    IssuerSwitched {
        old: Vec<Anchor>,
    },
}

#[derive(Clone, Debug)]
pub struct Rotation {
    pub anchors: Vec<Anchor>,
    /// The anchor the issuer chains to.
    pub current: Anchor,
    pub step: Step,
}

impl Rotation {
    /// Reads the bundle and the issuer's certificate (optionally followed by its chain).
    pub fn read(bundle_pem: &str, issuer_pem: &str) -> Result<Self, String> {
        let mut anchors = Vec::new();
        for der in pem_certs(bundle_pem).map_err(|e| format!("the trust bundle: {e}"))? {
            let info = CertInfo::from_der(&der).map_err(|e| format!("the trust bundle: {e}"))?;
            anchors.push(Anchor { info, sha256: fingerprint(&der), der });
        }
        if anchors.is_empty() {
            return Err("the trust bundle holds no certificate".into());
        }
        let chain = pem_certs(issuer_pem).map_err(|e| format!("the issuer: {e}"))?;
        let issuer = chain.first().ok_or("the issuer file holds no certificate")?;
        let ders: Vec<Vec<u8>> = anchors.iter().map(|a| a.der.clone()).collect();
        let at = anchor_of(issuer, &chain[1..], &ders).ok_or("the issuer chains to no anchor in the bundle: switch it back, or add its anchor first")?;
        Ok(Self::new(anchors, at))
    }

    /// Where a loaded issuer stands: its bundle, and the anchor it chains to.
    pub fn of(ca: &Ca) -> Self {
        let anchors =
            ca.anchors.iter().zip(&ca.anchors_der).map(|(info, der)| Anchor { info: info.clone(), sha256: fingerprint(der), der: der.clone() }).collect();
        Self::new(anchors, ca.issuer_anchor)
    }

    /// `current`: the index in `anchors` (not empty) of the anchor the issuer chains to.
    fn new(anchors: Vec<Anchor>, current: usize) -> Self {
        let current = anchors[current].clone();
        let newest = anchors.iter().max_by_key(|a| a.info.not_before).expect("not empty").clone();
        let step = if anchors.len() == 1 {
            Step::Steady
        } else if newest.sha256 != current.sha256 {
            Step::AnchorAdded { new: Box::new(newest) }
        } else {
            Step::IssuerSwitched { old: anchors.iter().filter(|a| a.sha256 != current.sha256).cloned().collect() }
        };
        Self { anchors, current, step }
    }

    /// One line for `knit check`: the step, and what comes next.
    pub fn describe(&self) -> String {
        match &self.step {
            Step::Steady => format!("no rotation under way (one anchor, {}, and the issuer chains to it)", self.current.info.subject),
            Step::AnchorAdded { new } => format!(
                "step 1 of 3 done: the new anchor {} is in the bundle, the issuer is still under {}; next, once every proxy has read the bundle: `knit identity rotate` switches the issuer",
                new.info.subject, self.current.info.subject
            ),
            Step::IssuerSwitched { old } => format!(
                "step 2 of 3 done: the issuer is under {}, the bundle still holds {}; next, once no proxy's leaf chains to it: `knit identity rotate` removes it",
                self.current.info.subject,
                old.iter().map(|a| a.info.subject.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create;
    use std::time::Duration;

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    #[test]
    fn the_step_follows_the_bundle_and_the_issuer() {
        let old = create::trust_anchor("root-1", YEAR).unwrap();
        std::thread::sleep(Duration::from_millis(1100)); // a later notBefore (second resolution)
        let new = create::trust_anchor("root-2", YEAR).unwrap();
        let (old_issuer, new_issuer) = (create::issuer("issuer-1", YEAR, &old).unwrap(), create::issuer("issuer-2", YEAR, &new).unwrap());
        let both = format!("{}{}", old.cert_pem, new.cert_pem);
        assert_eq!(Rotation::read(&old.cert_pem, &old_issuer.cert_pem).unwrap().step, Step::Steady);
        let added = Rotation::read(&both, &old_issuer.cert_pem).unwrap();
        assert!(matches!(&added.step, Step::AnchorAdded { new: n } if n.info.subject.contains("root-2")), "{:?}", added.step);
        assert!(added.describe().starts_with("step 1 of 3"));
        let switched = Rotation::read(&both, &new_issuer.cert_pem).unwrap();
        assert!(matches!(&switched.step, Step::IssuerSwitched { old: o } if o.len() == 1 && o[0].info.subject.contains("root-1")));
        assert_eq!(Rotation::read(&new.cert_pem, &new_issuer.cert_pem).unwrap().step, Step::Steady);
        let broken = Rotation::read(&old.cert_pem, &new_issuer.cert_pem).unwrap_err();
        assert!(broken.contains("chains to no anchor"), "{broken}");
        assert!(Rotation::read("", &old_issuer.cert_pem).is_err());
    }
}
