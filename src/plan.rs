//! Plan: the pure decision of what to do about one scan.
//!
//! Input: a [`ScanReport`], a [`PlanInput`] (what the state database says of
//! the paths the report mentions, and which remote folders exist), the job's
//! [`DeleteMode`] and the current time. Output: a [`Plan`], an ordered list of
//! [`Action`]s (folders parents-first, then uploads, then skips, then forgets,
//! deletes last) and a [`PlanSummary`] of counts.
//!
//! The whole decision table (README and [`plan`]'s docs) lives here, so it is
//! table-tested without a file system, a database or a network. This module
//! does no I/O, reads no clock, and knows nothing of how an upload is done;
//! the mass-delete guard is the daemon's, and [`Plan::hold_deletes`] is how it
//! applies it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use crate::config::DeleteMode;
use crate::hash::Hashes;
use crate::scan::{Change, LocalEntry, ScanReport};

/// What the state database says of one path, reduced to what planning needs.
/// The caller maps the store's `FileState` onto it, so this module does not
/// depend on the store's types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorState {
    /// Recorded, never uploaded (a `scan` without upload, or a crash before it).
    Pending,
    /// An upload was started; the uploader resumes its session if it is valid.
    Uploading,
    /// The remote holds this file as recorded.
    Synced {
        /// Needed to delete it remotely when mirroring.
        item_id: String,
        /// The hashes of the content the remote holds (what we uploaded);
        /// `None` when unknown. A file whose mtime or inode changed but whose
        /// content did not (a `touch`, a copy back) needs no new upload:
        /// that would only add a SharePoint version.
        content: Option<Hashes>,
    },
    /// The last upload failed; it is retried once `next_attempt` has passed.
    Failed {
        /// `None` = retry at the next opportunity.
        next_attempt: Option<SystemTime>,
    },
    /// The uploader decided not to upload this content (e.g. a name
    /// SharePoint refuses); retried only when the content changes.
    Skipped { reason: String },
}

/// Everything the planner reads besides the scan report; filled by the
/// caller from the state store.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// Prior state of the paths in the report's `entries`, `vanished` and
    /// `deselected`. A path absent here has never been recorded. Unchanged
    /// synced files never appear in the report, so this stays small on a rescan.
    pub files: HashMap<String, PriorState>,
    /// Remote folders (relative to the job's folder, `/`-separated) known to
    /// exist. The job's own folder ("") is the uploader's to ensure.
    pub remote_folders: HashSet<String>,
    /// The remote item of a path in `files` that is not synced but still
    /// holds one: an earlier version of a file whose change waits to go up
    /// (pending, uploading, failed) or that a scan skipped since. Mirroring
    /// deletes it too when the file is gone locally.
    pub remote_items: HashMap<String, String>,
}

/// Why a file is uploaded; shown in logs and `scan` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadReason {
    /// Never uploaded.
    New,
    /// The content changed since it was recorded.
    Changed,
    /// Unchanged locally, but not synced yet: pending, interrupted, or failed
    /// and due for another attempt.
    Retry,
}

/// Why an unchanged, not-synced file is left alone this time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HoldReason {
    /// It failed and its next attempt is not due yet.
    Backoff {
        #[serde(with = "unix_seconds")]
        until: SystemTime,
    },
    /// The uploader skipped this very content before; same verdict now.
    PreviouslySkipped { reason: String },
}

/// Why a state record is dropped without touching the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgetReason {
    /// Deleted locally; kept remotely (`delete = "keep"`) or never uploaded.
    Vanished,
    /// No longer selected by the job's patterns; the remote copy stays.
    Deselected,
}

/// One step for the uploader (or, for `Forget`, the store).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Ensure this remote folder exists; always before anything inside it.
    CreateFolder { path: String },
    /// Upload this file's content (the entry carries size and hashes to verify).
    Upload {
        entry: LocalEntry,
        reason: UploadReason,
    },
    /// Leave a not-yet-synced file alone this run.
    Skip { path: String, reason: HoldReason },
    /// Drop the state record; the remote is not touched.
    Forget { path: String, reason: ForgetReason },
    /// Delete the remote item (mirror mode only, subject to the daemon's guard).
    DeleteRemote { path: String, item_id: String },
}

/// Counts of a plan: what `scan` prints, what the `runs` table records, and
/// what the daemon's mass-delete guard weighs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanSummary {
    pub create_folders: u64,
    pub upload_new: u64,
    pub upload_changed: u64,
    pub upload_retry: u64,
    /// Bytes the uploads will send.
    pub upload_bytes: u64,
    /// Unchanged and synced: nothing to do (not listed as actions).
    pub up_to_date: u64,
    /// Skip actions (backoff or previously skipped).
    pub held: u64,
    pub forget: u64,
    pub delete_remote: u64,
    /// Files present locally (scanned entries + unchanged ones not listed):
    /// with `delete_remote`, the guard's "fraction of the job deleted".
    pub present: u64,
}

/// The actions for one run of one job, in execution order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub summary: PlanSummary,
}

impl Plan {
    /// Removes every `DeleteRemote` action and returns how many there were.
    /// The daemon calls this when the mass-delete guard trips: the records
    /// stay, so a later run (after an administrator's confirmation, or once
    /// the source is back) decides again.
    pub fn hold_deletes(&mut self) -> u64 {
        let before = self.actions.len();
        self.actions
            .retain(|a| !matches!(a, Action::DeleteRemote { .. }));
        let held = (before - self.actions.len()) as u64;
        self.summary.delete_remote -= held;
        held
    }

    /// The upload actions, for the uploader's queue.
    pub fn uploads(&self) -> impl Iterator<Item = (&LocalEntry, UploadReason)> {
        self.actions.iter().filter_map(|a| match a {
            Action::Upload { entry, reason } => Some((entry, *reason)),
            _ => None,
        })
    }
}

/// Decides what to do with one scan. Pure: same inputs, same plan.
///
/// | local (scan)           | prior state                 | action                                |
/// |------------------------|-----------------------------|---------------------------------------|
/// | new                    | none                        | Upload New                            |
/// | new                    | not synced                  | Upload New                            |
/// | new / changed          | synced, same content hashes | nothing (a touch; counted `up_to_date`) |
/// | new / changed          | synced, other or unknown content | Upload Changed                   |
/// | changed                | none / pending / uploading / failed (due or not) / skipped | Upload Changed (new content resets backoff and skip) |
/// | unchanged, not listed  | synced                      | nothing (counted `up_to_date`)        |
/// | unchanged              | synced                      | nothing (counted `up_to_date`)        |
/// | unchanged              | none                        | Upload New                            |
/// | unchanged              | pending / uploading         | Upload Retry                          |
/// | unchanged              | failed, due or no time      | Upload Retry                          |
/// | unchanged              | failed, next attempt later  | Skip Backoff{until}                   |
/// | unchanged              | skipped{reason}             | Skip PreviouslySkipped{reason}        |
/// | vanished               | synced, delete = mirror     | DeleteRemote{item_id}                 |
/// | vanished               | other, with a remote item, delete = mirror | DeleteRemote{item_id} (the earlier version) |
/// | vanished               | synced, delete = keep       | Forget Vanished                       |
/// | vanished               | anything else / none        | Forget Vanished                       |
/// | deselected (patterns)  | anything                    | Forget Deselected (never deleted)     |
/// | skipped by the scan    | anything                    | nothing (the record stays as it is)   |
///
/// Every ancestor folder of an upload that is not in
/// [`PlanInput::remote_folders`] gets one `CreateFolder`, parents first.
pub fn plan(report: &ScanReport, input: &PlanInput, delete: DeleteMode, now: SystemTime) -> Plan {
    let listed_unchanged = report
        .entries
        .iter()
        .filter(|e| e.change == Change::Unchanged)
        .count() as u64;
    // Unchanged files that were not listed are synced by construction.
    let unlisted_unchanged = report.unchanged.saturating_sub(listed_unchanged);
    let mut summary = PlanSummary {
        present: report.entries.len() as u64 + unlisted_unchanged,
        up_to_date: unlisted_unchanged,
        ..PlanSummary::default()
    };

    let mut uploads = Vec::new();
    let mut holds = Vec::new();
    for entry in &report.entries {
        match decide_entry(entry, input.files.get(&entry.path), now) {
            EntryDecision::Upload(reason) => {
                match reason {
                    UploadReason::New => summary.upload_new += 1,
                    UploadReason::Changed => summary.upload_changed += 1,
                    UploadReason::Retry => summary.upload_retry += 1,
                }
                summary.upload_bytes += entry.size;
                uploads.push(Action::Upload {
                    entry: entry.clone(),
                    reason,
                });
            }
            EntryDecision::Hold(reason) => holds.push(Action::Skip {
                path: entry.path.clone(),
                reason,
            }),
            EntryDecision::UpToDate => summary.up_to_date += 1,
        }
    }
    summary.held = holds.len() as u64;

    let mut folders = BTreeSet::new();
    for action in &uploads {
        if let Action::Upload { entry, .. } = action {
            for (i, _) in entry.path.match_indices('/') {
                let folder = &entry.path[..i];
                if !input.remote_folders.contains(folder) {
                    folders.insert(folder);
                }
            }
        }
    }
    summary.create_folders = folders.len() as u64;

    let mut forgets = Vec::new();
    let mut deletes = Vec::new();
    for path in &report.vanished {
        match (input.files.get(path), delete) {
            // A synced row with no item (the item was deleted remotely and
            // that was accepted) has nothing left to delete: forgotten.
            (Some(PriorState::Synced { item_id, .. }), DeleteMode::Mirror)
                if !item_id.is_empty() =>
            {
                deletes.push(Action::DeleteRemote {
                    path: path.clone(),
                    item_id: item_id.clone(),
                });
            }
            (Some(_), DeleteMode::Mirror) if input.remote_items.contains_key(path) => {
                deletes.push(Action::DeleteRemote {
                    path: path.clone(),
                    item_id: input.remote_items[path].clone(),
                });
            }
            _ => forgets.push(Action::Forget {
                path: path.clone(),
                reason: ForgetReason::Vanished,
            }),
        }
    }
    for path in &report.deselected {
        forgets.push(Action::Forget {
            path: path.clone(),
            reason: ForgetReason::Deselected,
        });
    }
    summary.forget = forgets.len() as u64;
    summary.delete_remote = deletes.len() as u64;

    // BTreeSet order puts a parent ("a") before its children ("a/b"): a
    // prefix sorts before every longer string that starts with it.
    let mut actions: Vec<Action> = folders
        .into_iter()
        .map(|path| Action::CreateFolder {
            path: path.to_owned(),
        })
        .collect();
    actions.extend(uploads);
    actions.extend(holds);
    actions.extend(forgets);
    actions.extend(deletes);
    Plan { actions, summary }
}

enum EntryDecision {
    Upload(UploadReason),
    Hold(HoldReason),
    UpToDate,
}

/// The rows of the decision table for files present locally.
fn decide_entry(entry: &LocalEntry, prior: Option<&PriorState>, now: SystemTime) -> EntryDecision {
    use EntryDecision::{Hold, UpToDate, Upload};
    match (entry.change, prior) {
        (Change::Unchanged, Some(PriorState::Synced { .. })) => UpToDate,
        (
            _,
            Some(PriorState::Synced {
                content: Some(h), ..
            }),
        ) if entry.hashes.as_ref() == Some(h) => UpToDate,
        (_, Some(PriorState::Synced { .. })) => Upload(UploadReason::Changed),
        (Change::New, _) | (Change::Unchanged, None) => Upload(UploadReason::New),
        (Change::Changed, _) => Upload(UploadReason::Changed),
        (Change::Unchanged, Some(PriorState::Pending | PriorState::Uploading)) => {
            Upload(UploadReason::Retry)
        }
        (Change::Unchanged, Some(PriorState::Failed { next_attempt })) => match next_attempt {
            Some(until) if *until > now => Hold(HoldReason::Backoff { until: *until }),
            _ => Upload(UploadReason::Retry),
        },
        (Change::Unchanged, Some(PriorState::Skipped { reason })) => {
            Hold(HoldReason::PreviouslySkipped {
                reason: reason.clone(),
            })
        }
    }
}

/// Which of `uploads` would not go up because another file present now has
/// a path that differs from theirs only in case (SharePoint names are
/// case-insensitive: both would be one item). The rule of
/// `Store::case_twins`, which decides it for a run, over `present` (every
/// local file, with whether it has a remote item) instead of the state:
/// the one with a remote item keeps the name, else the first in byte
/// order. Returns upload path -> the twin that keeps the name.
pub fn case_twins_among<'a>(
    present: impl IntoIterator<Item = (&'a str, bool)>,
    uploads: &[&str],
) -> HashMap<String, String> {
    let mut keepers: HashMap<String, (bool, &str)> = HashMap::new();
    for (path, has_item) in present {
        let rank = (!has_item, path);
        keepers
            .entry(crate::state::fold_case(path))
            .and_modify(|k| *k = (*k).min(rank))
            .or_insert(rank);
    }
    uploads
        .iter()
        .filter_map(|p| {
            let (_, keeper) = keepers.get(&crate::state::fold_case(p))?;
            (keeper != p).then(|| (p.to_string(), keeper.to_string()))
        })
        .collect()
}

/// `SystemTime` as integer seconds since the Unix epoch in JSON.
mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        s.serialize_i64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;
    use rstest::rstest;
    use std::time::Duration;

    #[test]
    fn case_twins_among_the_present_files_keep_the_uploaded_one_else_the_first() {
        let present = [
            ("A.txt", false),
            ("a.txt", false),
            ("b.TXT", true),
            ("B.txt", false),
            ("Ärger.txt", false),
            ("ärger.txt", true),
            ("alone.txt", false),
        ];
        let uploads = ["a.txt", "A.txt", "B.txt", "Ärger.txt", "alone.txt"];
        let mut got: Vec<(String, String)> =
            case_twins_among(present, &uploads).into_iter().collect();
        got.sort();
        let want = [
            ("B.txt", "b.TXT"),
            ("a.txt", "A.txt"),
            ("Ärger.txt", "ärger.txt"),
        ];
        assert_eq!(got, want.map(|(p, t)| (p.to_string(), t.to_string())));
    }

    const NOW_SECS: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn entry(path: &str, change: Change) -> LocalEntry {
        LocalEntry {
            path: path.to_owned(),
            size: 10,
            mtime_ns: 1,
            inode: 1,
            hashes: Some(hash_bytes(path.as_bytes())),
            change,
        }
    }

    fn synced() -> PriorState {
        PriorState::Synced {
            item_id: "ID1".into(),
            content: None,
        }
    }

    /// Synced, with the hashes of the content the remote holds.
    fn synced_with(content: Hashes) -> PriorState {
        PriorState::Synced {
            item_id: "ID1".into(),
            content: Some(content),
        }
    }

    fn failed_in(secs: i64) -> PriorState {
        PriorState::Failed {
            next_attempt: Some(if secs >= 0 {
                now() + Duration::from_secs(secs as u64)
            } else {
                now() - Duration::from_secs((-secs) as u64)
            }),
        }
    }

    fn skipped_prior() -> PriorState {
        PriorState::Skipped {
            reason: "invalid name".into(),
        }
    }

    /// The expected action for a single file, without folders.
    #[derive(Debug, PartialEq)]
    enum Want {
        Upload(UploadReason),
        Backoff,
        PreviouslySkipped,
        Nothing,
    }

    // One case per row of the decision table for files present locally.
    #[rstest]
    #[case::new_none(Change::New, None, Want::Upload(UploadReason::New))]
    #[case::new_pending(
        Change::New,
        Some(PriorState::Pending),
        Want::Upload(UploadReason::New)
    )]
    #[case::new_synced(Change::New, Some(synced()), Want::Upload(UploadReason::Changed))]
    #[case::changed_synced(Change::Changed, Some(synced()), Want::Upload(UploadReason::Changed))]
    #[case::touched_synced_same_content(
        Change::Changed,
        Some(synced_with(hash_bytes(b"f.txt"))),
        Want::Nothing
    )]
    #[case::changed_synced_other_content(
        Change::Changed,
        Some(synced_with(hash_bytes(b"older content"))),
        Want::Upload(UploadReason::Changed)
    )]
    #[case::changed_none(Change::Changed, None, Want::Upload(UploadReason::Changed))]
    #[case::changed_pending(
        Change::Changed,
        Some(PriorState::Pending),
        Want::Upload(UploadReason::Changed)
    )]
    #[case::changed_uploading(
        Change::Changed,
        Some(PriorState::Uploading),
        Want::Upload(UploadReason::Changed)
    )]
    #[case::changed_failed_not_due(
        Change::Changed,
        Some(failed_in(3600)),
        Want::Upload(UploadReason::Changed)
    )]
    #[case::changed_skipped(
        Change::Changed,
        Some(skipped_prior()),
        Want::Upload(UploadReason::Changed)
    )]
    #[case::unchanged_synced(Change::Unchanged, Some(synced()), Want::Nothing)]
    #[case::unchanged_none(Change::Unchanged, None, Want::Upload(UploadReason::New))]
    #[case::unchanged_pending(
        Change::Unchanged,
        Some(PriorState::Pending),
        Want::Upload(UploadReason::Retry)
    )]
    #[case::unchanged_uploading(
        Change::Unchanged,
        Some(PriorState::Uploading),
        Want::Upload(UploadReason::Retry)
    )]
    #[case::unchanged_failed_no_time(Change::Unchanged, Some(PriorState::Failed { next_attempt: None }), Want::Upload(UploadReason::Retry))]
    #[case::unchanged_failed_due(Change::Unchanged, Some(failed_in(-1)), Want::Upload(UploadReason::Retry))]
    #[case::unchanged_failed_due_exactly_now(
        Change::Unchanged,
        Some(failed_in(0)),
        Want::Upload(UploadReason::Retry)
    )]
    #[case::unchanged_failed_not_due(Change::Unchanged, Some(failed_in(60)), Want::Backoff)]
    #[case::unchanged_skipped(Change::Unchanged, Some(skipped_prior()), Want::PreviouslySkipped)]
    fn present_file_rows(
        #[case] change: Change,
        #[case] prior: Option<PriorState>,
        #[case] want: Want,
        #[values(DeleteMode::Keep, DeleteMode::Mirror)] delete: DeleteMode,
    ) {
        let report = ScanReport {
            entries: vec![entry("f.txt", change)],
            unchanged: u64::from(change == Change::Unchanged),
            ..ScanReport::default()
        };
        let mut input = PlanInput::default();
        if let Some(p) = prior {
            input.files.insert("f.txt".into(), p);
        }
        let plan = plan(&report, &input, delete, now());
        let got = match plan.actions.as_slice() {
            [] => Want::Nothing,
            [Action::Upload { entry, reason }] => {
                assert_eq!(entry, &report.entries[0]);
                Want::Upload(*reason)
            }
            [
                Action::Skip {
                    path,
                    reason: HoldReason::Backoff { until },
                },
            ] => {
                assert_eq!(path, "f.txt");
                assert_eq!(*until, now() + Duration::from_secs(60));
                Want::Backoff
            }
            [
                Action::Skip {
                    reason: HoldReason::PreviouslySkipped { reason },
                    ..
                },
            ] => {
                assert_eq!(reason, "invalid name");
                Want::PreviouslySkipped
            }
            other => panic!("unexpected actions {other:?}"),
        };
        assert_eq!(got, want);
        let s = plan.summary;
        assert_eq!(s.present, 1);
        assert_eq!(
            s.upload_new + s.upload_changed + s.upload_retry + s.held + s.up_to_date,
            1,
            "{s:?}"
        );
    }

    #[derive(Debug, PartialEq)]
    enum Gone {
        Delete,
        Forget(ForgetReason),
    }

    // One case per row for files no longer present.
    #[rstest]
    #[case::vanished_synced_mirror(false, Some(synced()), DeleteMode::Mirror, Gone::Delete)]
    #[case::vanished_synced_keep(
        false,
        Some(synced()),
        DeleteMode::Keep,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::vanished_pending_mirror(
        false,
        Some(PriorState::Pending),
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::vanished_uploading_mirror(
        false,
        Some(PriorState::Uploading),
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::vanished_failed_mirror(
        false,
        Some(failed_in(60)),
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::vanished_skipped_mirror(
        false,
        Some(skipped_prior()),
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::vanished_unknown_mirror(
        false,
        None,
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::vanished_synced_without_item_mirror(
        false,
        Some(PriorState::Synced { item_id: String::new(), content: None }),
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Vanished)
    )]
    #[case::deselected_synced_mirror(
        true,
        Some(synced()),
        DeleteMode::Mirror,
        Gone::Forget(ForgetReason::Deselected)
    )]
    #[case::deselected_synced_keep(
        true,
        Some(synced()),
        DeleteMode::Keep,
        Gone::Forget(ForgetReason::Deselected)
    )]
    fn gone_file_rows(
        #[case] deselected: bool,
        #[case] prior: Option<PriorState>,
        #[case] delete: DeleteMode,
        #[case] want: Gone,
    ) {
        let mut report = ScanReport::default();
        if deselected {
            report.deselected.push("d/f.txt".into());
        } else {
            report.vanished.push("d/f.txt".into());
        }
        let mut input = PlanInput::default();
        if let Some(p) = prior {
            input.files.insert("d/f.txt".into(), p);
        }
        let plan = plan(&report, &input, delete, now());
        let got = match plan.actions.as_slice() {
            [Action::DeleteRemote { path, item_id }] => {
                assert_eq!((path.as_str(), item_id.as_str()), ("d/f.txt", "ID1"));
                Gone::Delete
            }
            [Action::Forget { path, reason }] => {
                assert_eq!(path, "d/f.txt");
                Gone::Forget(*reason)
            }
            other => panic!("unexpected actions {other:?}"),
        };
        assert_eq!(got, want);
        assert_eq!(plan.summary.forget + plan.summary.delete_remote, 1);
    }

    /// A file whose change waited to go up (or that a scan skipped since)
    /// still has its earlier version remotely: mirroring deletes that too;
    /// keep leaves it, and a row without an item is only forgotten.
    #[rstest::rstest]
    #[case::pending(PriorState::Pending)]
    #[case::uploading(PriorState::Uploading)]
    #[case::failed(PriorState::Failed { next_attempt: None })]
    #[case::skipped(PriorState::Skipped { reason: "unreadable".into() })]
    fn a_gone_file_with_an_earlier_version_remotely_is_mirrored(#[case] prior: PriorState) {
        let mut report = ScanReport::default();
        report.vanished.push("d/f.txt".into());
        let mut input = PlanInput::default();
        input.files.insert("d/f.txt".into(), prior);
        let forgotten = plan(&report, &input, DeleteMode::Mirror, now());
        assert!(
            matches!(forgotten.actions.as_slice(), [Action::Forget { .. }]),
            "{:?}",
            forgotten.actions
        );
        input.remote_items.insert("d/f.txt".into(), "OLD".into());
        let mirrored = plan(&report, &input, DeleteMode::Mirror, now());
        assert_eq!(
            mirrored.actions,
            [Action::DeleteRemote {
                path: "d/f.txt".into(),
                item_id: "OLD".into()
            }]
        );
        let kept = plan(&report, &input, DeleteMode::Keep, now());
        assert!(
            matches!(kept.actions.as_slice(), [Action::Forget { .. }]),
            "{:?}",
            kept.actions
        );
    }

    #[test]
    fn unchanged_synced_files_are_counted_not_listed() {
        let report = ScanReport {
            unchanged: 100_000,
            ..ScanReport::default()
        };
        let plan = plan(&report, &PlanInput::default(), DeleteMode::Mirror, now());
        assert!(plan.actions.is_empty());
        assert_eq!(plan.summary.up_to_date, 100_000);
        assert_eq!(plan.summary.present, 100_000);
    }

    #[test]
    fn folders_are_created_once_parents_first_and_only_when_missing() {
        let report = ScanReport {
            entries: vec![
                entry("a/b/c/one.txt", Change::New),
                entry("a/b/two.txt", Change::New),
                entry("a b/x.txt", Change::New),
                entry("top.txt", Change::New),
                entry("known/deeper/y.txt", Change::New),
                // Held files need no folder.
                entry("held/z.txt", Change::Unchanged),
            ],
            unchanged: 1,
            ..ScanReport::default()
        };
        let mut input = PlanInput::default();
        input.remote_folders.insert("known".into());
        input.files.insert("held/z.txt".into(), failed_in(60));
        let plan = plan(&report, &input, DeleteMode::Keep, now());
        let folders: Vec<&str> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateFolder { path } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(folders, ["a", "a b", "a/b", "a/b/c", "known/deeper"]);
        // Every folder action comes before any upload.
        let first_upload = plan
            .actions
            .iter()
            .position(|a| matches!(a, Action::Upload { .. }))
            .unwrap();
        assert_eq!(first_upload, folders.len());
        assert_eq!(plan.summary.create_folders, 5);
        assert_eq!(plan.summary.upload_new, 5);
        assert_eq!(plan.summary.upload_bytes, 50);
        assert_eq!(plan.summary.held, 1);
    }

    #[test]
    fn deletes_come_last_and_can_be_held_by_the_guard() {
        let report = ScanReport {
            entries: vec![entry("new.txt", Change::New)],
            vanished: vec!["gone1".into(), "gone2".into(), "never-synced".into()],
            deselected: vec!["old.tmp".into()],
            ..ScanReport::default()
        };
        let mut input = PlanInput::default();
        input.files.insert("gone1".into(), synced());
        input.files.insert("gone2".into(), synced());
        input
            .files
            .insert("never-synced".into(), PriorState::Pending);
        input.files.insert("old.tmp".into(), synced());
        let mut plan = plan(&report, &input, DeleteMode::Mirror, now());
        let kinds: Vec<&str> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::CreateFolder { .. } => "mkdir",
                Action::Upload { .. } => "upload",
                Action::Skip { .. } => "skip",
                Action::Forget { .. } => "forget",
                Action::DeleteRemote { .. } => "delete",
            })
            .collect();
        assert_eq!(kinds, ["upload", "forget", "forget", "delete", "delete"]);
        assert_eq!(plan.summary.delete_remote, 2);
        assert_eq!(plan.hold_deletes(), 2);
        assert_eq!(plan.summary.delete_remote, 0);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::DeleteRemote { .. }))
        );
        assert_eq!(plan.uploads().count(), 1);
    }

    #[test]
    fn same_inputs_same_plan() {
        let report = ScanReport {
            entries: vec![entry("x/a", Change::New), entry("y/b", Change::Changed)],
            vanished: vec!["z".into()],
            ..ScanReport::default()
        };
        let input = PlanInput::default();
        assert_eq!(
            plan(&report, &input, DeleteMode::Mirror, now()),
            plan(&report, &input, DeleteMode::Mirror, now())
        );
    }

    #[test]
    fn plan_serializes_for_scan_json() {
        let report = ScanReport {
            entries: vec![entry("d/a.txt", Change::Unchanged)],
            unchanged: 1,
            ..ScanReport::default()
        };
        let mut input = PlanInput::default();
        input.files.insert("d/a.txt".into(), failed_in(60));
        let plan = plan(&report, &input, DeleteMode::Keep, now());
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["actions"][0]["action"], "skip");
        assert_eq!(json["actions"][0]["reason"]["type"], "backoff");
        assert_eq!(json["actions"][0]["reason"]["until"], NOW_SECS + 60);
        assert_eq!(json["summary"]["held"], 1);
    }
}
