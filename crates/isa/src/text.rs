//! The text form of programs. (Being written: see docs/isa.md.)
use crate::ap::Ap;

/// Formats an access pattern in the text syntax.
pub fn format_ap(ap: &Ap) -> String {
    format!("{:?}", ap)
}
