//! The sanity checks of a run: each scenario notes its checks in its table,
//! and a failed one fails the run.

use crate::report::Table;

/// Outcome of the sanity checks of one scenario.
pub(super) struct Checks {
    /// What each failed check asserted.
    pub(super) failed: Vec<String>,
    /// Checks that held.
    pub(super) passed: usize,
    /// Whether [`Checks::target`] counts (a full run) or only notes (smoke
    /// mode, whose sizes are too small for a target to mean anything).
    pub(super) enforce_targets: bool,
}

impl Checks {
    /// A scenario's target: a check in a full run, a note in smoke mode.
    pub(super) fn target(&mut self, table: &mut Table, ok: bool, what: String) {
        if self.enforce_targets {
            self.check(table, ok, what);
        } else {
            let outcome = if ok { "met" } else { "missed" };
            table.note(format!("check (not enforced in smoke): {outcome} — {what}"));
        }
    }

    /// A sanity check: noted in the table, and counted.
    pub(super) fn check(&mut self, table: &mut Table, ok: bool, what: String) {
        if ok {
            self.passed += 1;
            table.note(format!("check: ok — {what}"));
        } else {
            table.note(format!("check: FAILED — {what}"));
            self.failed.push(what);
        }
    }
}
