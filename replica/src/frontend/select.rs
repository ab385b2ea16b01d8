//! Choosing the frontend that turns a volume into a kernel block device on this host.
//!
//! Preference for `auto`: ublk (fewest copies and context switches, Linux 6.0+), then NBD
//! (any kernel with the `nbd` module), then FUSE (a file on a FUSE mount behind a loop
//! device; works wherever `/dev/fuse` does, at the highest cost).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A frontend, or `Auto` to let [`choose`] pick one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    Auto,
    Ublk,
    Nbd,
    Fuse,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::Auto => "auto",
            FrontendKind::Ublk => "ublk",
            FrontendKind::Nbd => "nbd",
            FrontendKind::Fuse => "fuse",
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FrontendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(FrontendKind::Auto),
            "ublk" => Ok(FrontendKind::Ublk),
            "nbd" => Ok(FrontendKind::Nbd),
            "fuse" => Ok(FrontendKind::Fuse),
            other => Err(Error::InvalidArgument(format!(
                "unknown frontend '{other}' (expected auto, ublk, nbd or fuse)"
            ))),
        }
    }
}

/// What the host offers, as found by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostFrontends {
    pub ublk: bool,
    pub nbd: bool,
    pub fuse: bool,
}

impl HostFrontends {
    /// [`choose`] with what this host offers.
    pub fn choose(&self, requested: FrontendKind) -> Result<FrontendKind> {
        choose(requested, self.ublk, self.nbd, self.fuse)
    }
}

/// Picks the frontend: `Auto` takes ublk, then NBD, then FUSE, whichever is available
/// first; an explicit request is honoured only if that frontend is available. Errors name
/// what is missing.
pub fn choose(
    requested: FrontendKind,
    have_ublk: bool,
    have_nbd: bool,
    have_fuse: bool,
) -> Result<FrontendKind> {
    let missing = |kind: FrontendKind| -> Error {
        let what = match kind {
            FrontendKind::Ublk => {
                "ublk needs /dev/ublk-control (module ublk_drv, Linux 6.0+) and a build with the `ublk` feature"
            }
            FrontendKind::Nbd => "nbd needs /dev/nbd0 (module nbd)",
            FrontendKind::Fuse => "fuse needs /dev/fuse (module fuse)",
            // Never asked for (auto reports its own error below); said plainly anyway.
            FrontendKind::Auto => "it takes ublk, nbd or fuse, and none of them is",
        };
        Error::Unavailable(format!("frontend {kind} is not available here: {what}"))
    };
    match requested {
        FrontendKind::Ublk if have_ublk => Ok(FrontendKind::Ublk),
        FrontendKind::Nbd if have_nbd => Ok(FrontendKind::Nbd),
        FrontendKind::Fuse if have_fuse => Ok(FrontendKind::Fuse),
        FrontendKind::Ublk | FrontendKind::Nbd | FrontendKind::Fuse => Err(missing(requested)),
        FrontendKind::Auto => {
            if have_ublk {
                Ok(FrontendKind::Ublk)
            } else if have_nbd {
                Ok(FrontendKind::Nbd)
            } else if have_fuse {
                Ok(FrontendKind::Fuse)
            } else {
                Err(Error::Unavailable(
                    "no block-device frontend is available here: no /dev/ublk-control \
                     (ublk_drv), no /dev/nbd0 (nbd), no /dev/fuse (fuse)"
                        .into(),
                ))
            }
        }
    }
}

/// Looks at this host: ublk via [`super::ublk::available`] (`/dev/ublk-control`, or
/// `modprobe -n ublk_drv`), NBD via `/dev/nbd0` or `modprobe -n nbd`, FUSE via `/dev/fuse`.
/// Loads no module.
pub fn probe() -> HostFrontends {
    HostFrontends {
        ublk: super::ublk::available(),
        nbd: Path::new("/dev/nbd0").exists() || super::ublk::module_available("nbd"),
        fuse: Path::new("/dev/fuse").exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::FrontendKind::*;
    use super::*;

    #[test]
    fn auto_prefers_ublk_then_nbd_then_fuse() {
        assert_eq!(choose(Auto, true, true, true).unwrap(), Ublk);
        assert_eq!(choose(Auto, true, false, false).unwrap(), Ublk);
        assert_eq!(choose(Auto, false, true, true).unwrap(), Nbd);
        assert_eq!(choose(Auto, false, true, false).unwrap(), Nbd);
        assert_eq!(choose(Auto, false, false, true).unwrap(), Fuse);
        let err = choose(Auto, false, false, false).unwrap_err().to_string();
        for what in ["ublk", "nbd", "fuse"] {
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn explicit_requests_are_honoured_or_name_what_is_missing() {
        assert_eq!(choose(Nbd, true, true, true).unwrap(), Nbd);
        assert_eq!(choose(Fuse, true, true, true).unwrap(), Fuse);
        assert_eq!(choose(Ublk, true, false, false).unwrap(), Ublk);
        let err = choose(Ublk, false, true, true).unwrap_err().to_string();
        assert!(
            err.contains("ublk") && err.contains("/dev/ublk-control"),
            "{err}"
        );
        let err = choose(Nbd, true, false, true).unwrap_err().to_string();
        assert!(err.contains("nbd") && err.contains("/dev/nbd0"), "{err}");
        let err = choose(Fuse, true, true, false).unwrap_err().to_string();
        assert!(err.contains("/dev/fuse"), "{err}");
        assert!(matches!(
            choose(Nbd, false, false, false),
            Err(Error::Unavailable(_))
        ));
    }

    #[test]
    fn kinds_parse_and_print() {
        for kind in [Auto, Ublk, Nbd, Fuse] {
            assert_eq!(kind.to_string().parse::<FrontendKind>().unwrap(), kind);
        }
        assert_eq!(" UBLK ".parse::<FrontendKind>().unwrap(), Ublk);
        assert!("iscsi".parse::<FrontendKind>().is_err());
        let host = HostFrontends {
            ublk: false,
            nbd: false,
            fuse: true,
        };
        assert_eq!(host.choose(Auto).unwrap(), Fuse);
    }

    #[test]
    fn probe_agrees_with_the_device_nodes() {
        let host = probe();
        assert_eq!(host.fuse, Path::new("/dev/fuse").exists());
        if Path::new("/dev/ublk-control").exists() {
            assert_eq!(host.ublk, cfg!(feature = "ublk"));
        }
        if Path::new("/dev/nbd0").exists() {
            assert!(host.nbd);
        }
    }
}
