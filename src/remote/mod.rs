//! The remote side in our own words: a small [`Remote`] trait, the types it
//! speaks ([`RemotePath`], [`RemoteItem`], [`UploadSession`]) and the one
//! error type every implementation returns, [`RemoteError`], classified the
//! way the uploader decides (STYLE.md 5: permanent, retry-after, backoff,
//! re-login, plus the two upload-specific outcomes "session gone" and
//! "quota").
//!
//! Implementations: [`graph::GraphRemote`] (Microsoft Graph over HTTP, the
//! only module that knows Graph's JSON and URLs). Sign-in lives in [`auth`],
//! SharePoint's naming rules in [`names`].
//!
//! What this module does not do: decide what to upload (`plan`), remember
//! anything between runs (`state`), or retry (implementations retry what
//! retrying can fix before they return; `retry` holds the shared policy).

pub mod auth;
pub mod graph;
pub mod names;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::SiteUrl;

pub use auth::AuthError;
pub use graph::GraphRemote;

/// A path inside a document library, as segments that are already valid
/// SharePoint names (checked or encoded by [`names`]). The empty path is the
/// library root. Implementations encode each segment for their transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(Vec<String>);

impl RemotePath {
    /// The library root.
    pub fn root() -> RemotePath {
        RemotePath(Vec::new())
    }

    /// A path from `/`-separated text; empty segments are dropped.
    pub fn parse(text: &str) -> RemotePath {
        RemotePath(
            text.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// A path from segments (each must be a single name, without `/`).
    pub fn from_segments(segments: Vec<String>) -> RemotePath {
        RemotePath(segments)
    }

    /// This path with `other`'s segments appended.
    pub fn join(&self, other: &RemotePath) -> RemotePath {
        let mut v = self.0.clone();
        v.extend(other.0.iter().cloned());
        RemotePath(v)
    }

    /// This path with one more segment.
    pub fn child(&self, name: &str) -> RemotePath {
        let mut v = self.0.clone();
        v.push(name.to_string());
        RemotePath(v)
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// True for the library root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent and the last segment; `None` for the root.
    pub fn split_last(&self) -> Option<(RemotePath, &str)> {
        let (last, parent) = self.0.split_last()?;
        Some((RemotePath(parent.to_vec()), last.as_str()))
    }

    /// Characters of the decoded path including separators, for SharePoint's
    /// 400-character limit (graph-api.md section 8).
    pub fn char_len(&self) -> usize {
        self.0.iter().map(|s| s.chars().count() + 1).sum()
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// What the remote says about one file or folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteItem {
    /// Stable item id (survives renames); what delta reports.
    pub id: String,
    pub name: String,
    /// The parent folder's id; `None` for the library root (or when the
    /// service left it out).
    pub parent_id: Option<String>,
    /// Bytes as stored remotely (after SharePoint's own rewrite, if any).
    pub size: u64,
    /// Changes with content and metadata; `None` if the service left it out.
    pub etag: Option<String>,
    /// Changes with content only.
    pub ctag: Option<String>,
    /// The remote content hash; may be missing right after an upload.
    pub quick_xor: Option<String>,
    /// The client-supplied modification time (`fileSystemInfo`), 1 s precision.
    pub mtime: Option<DateTime<Utc>>,
    /// Folders have no content hash and are never uploaded.
    pub is_folder: bool,
}

/// One entry of a delta page (graph-api.md section 6): the item's latest
/// state, matched by `id` (delta carries no paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaItem {
    pub id: String,
    /// Empty for deleted items on business drives.
    pub name: String,
    /// The parent folder's id; `None` for the library root.
    pub parent_id: Option<String>,
    /// True when the item was deleted (`deleted{}` facet).
    pub deleted: bool,
    pub is_folder: bool,
    pub size: u64,
    pub etag: Option<String>,
    pub ctag: Option<String>,
    pub quick_xor: Option<String>,
    /// `fileSystemInfo.lastModifiedDateTime`: the mtime our upload set, or
    /// the time of someone else's edit.
    pub mtime: Option<DateTime<Utc>>,
}

/// Where a delta page says to go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaNext {
    /// More pages: fetch this `@odata.nextLink` (never stored).
    More(String),
    /// The last page: this `@odata.deltaLink` is where the next delta starts.
    Done(String),
}

/// One page of a delta query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPage {
    pub items: Vec<DeltaItem>,
    pub next: DeltaNext,
}

/// One page of a folder's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildrenPage {
    pub items: Vec<RemoteItem>,
    /// The `@odata.nextLink`, when the folder has more children.
    pub next: Option<String>,
}

/// An open resumable upload. `Debug` hides the URL: it carries its own
/// credential, and anyone holding it may write the file.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// Where fragments go (no `Authorization` header is sent there).
    pub url: String,
    /// When the service drops the session if nothing arrives.
    pub expires: Option<DateTime<Utc>>,
    /// The first byte the service has not received yet; `None` when it
    /// expects no more (an empty `nextExpectedRanges`: it has every byte).
    pub next_offset: Option<u64>,
}

impl fmt::Debug for UploadSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadSession")
            .field("url", &"<redacted>")
            .field("expires", &self.expires)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

/// What a fragment PUT achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// Stored; send from `next_offset` next.
    Accepted {
        next_offset: u64,
        expires: Option<DateTime<Utc>>,
    },
    /// That was the last fragment: the file is committed.
    Done(RemoteItem),
}

/// How the caller should react to a [`RemoteError`] (STYLE.md 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retrying the same request cannot succeed (bad name, too long, 4xx).
    Permanent,
    /// The service asked us to wait this long (still throttled after retries).
    RetryAfter(Duration),
    /// A temporary failure that outlasted the retries; try again later.
    Backoff,
    /// A person must sign in again (`sharepush login`).
    Reauth,
    /// The upload session expired or vanished: start the upload over.
    SessionGone,
    /// The library is full: stop uploading to it.
    Quota,
}

/// Why a remote operation failed. Messages never contain a token, a secret
/// or an upload URL; Graph's own error code (the innermost one) is kept
/// because it is what an administrator can look up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The service refused and retrying will not help.
    #[error("{status} {code}")]
    Permanent {
        /// HTTP status.
        status: u16,
        /// The innermost Graph error code (e.g. `invalidPath`, `pathIsTooLong`).
        code: String,
    },
    /// Still throttled after the retries allowed for one request.
    #[error("throttled by the service (Retry-After {}s)", .0.as_secs())]
    RetryAfter(Duration),
    /// Server errors or broken connections that outlasted the retries.
    #[error("temporary failure: {what}")]
    Backoff {
        /// What failed, e.g. "503 serviceNotAvailable" or "connection".
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Signing in failed in a way that needs a person (or fixed credentials).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The upload session is gone (expired, cancelled, or never existed).
    #[error("the upload session expired or was not found")]
    SessionGone,
    /// `507 quotaLimitReached`.
    #[error("507 quotaLimitReached: the library is out of storage")]
    Quota,
    /// `416`: the fragment did not start where the service expected.
    #[error("416 {code}: fragment not at the expected offset")]
    Range { code: String },
    /// `410 resyncRequired` from delta: the stored delta link is no longer
    /// valid; drop it and enumerate again.
    #[error("410 resyncRequired: the delta link expired; enumerating again")]
    ResyncRequired,
    /// The reply did not have the shape graph-api.md documents.
    #[error("unexpected reply to {what}: {detail}")]
    Protocol { what: &'static str, detail: String },
    /// The site URL does not resolve (404 on `/sites/{host}:/{path}`).
    #[error("site {site} not found (404)")]
    SiteNotFound { site: String },
    /// The site has no document library of that name (deleted, renamed, or
    /// never created): the job cannot run until it exists again.
    #[error("library {library:?} not found on site {site} (libraries there: {})", list_or_none(.available))]
    LibraryNotFound {
        site: String,
        library: String,
        /// The names of the site's document libraries, to spot a typo or a rename.
        available: Vec<String>,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl RemoteError {
    /// How to react, in the uploader's vocabulary.
    pub fn class(&self) -> ErrorClass {
        match self {
            RemoteError::Permanent { .. }
            | RemoteError::Protocol { .. }
            | RemoteError::ResyncRequired
            | RemoteError::SiteNotFound { .. }
            | RemoteError::LibraryNotFound { .. } => ErrorClass::Permanent,
            RemoteError::RetryAfter(d) => ErrorClass::RetryAfter(*d),
            RemoteError::Backoff { .. } => ErrorClass::Backoff,
            RemoteError::Auth(e) if e.needs_person() => ErrorClass::Reauth,
            RemoteError::Auth(_) => ErrorClass::Backoff,
            RemoteError::SessionGone | RemoteError::Range { .. } => ErrorClass::SessionGone,
            RemoteError::Quota => ErrorClass::Quota,
        }
    }

    /// The Graph status and code, when the service gave one.
    pub fn code(&self) -> Option<(u16, &str)> {
        match self {
            RemoteError::Permanent { status, code } => Some((*status, code)),
            RemoteError::SiteNotFound { .. } => Some((404, "siteNotFound")),
            RemoteError::LibraryNotFound { .. } => Some((404, "libraryNotFound")),
            _ => None,
        }
    }

    /// A `404` on a drive-scoped request. Graph answers `itemNotFound` both
    /// for a missing item (or parent, or session) in a live library and for
    /// a drive id whose library was deleted, and the two must not be told
    /// apart by the message: the caller resolves the library again and
    /// compares drive ids (`job::recheck_drive`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::Permanent { status: 404, .. })
    }

    /// The site or the library itself does not resolve: the whole job must
    /// wait until an administrator brings it back (or fixes the config).
    pub fn is_library_gone(&self) -> bool {
        matches!(
            self,
            RemoteError::SiteNotFound { .. } | RemoteError::LibraryNotFound { .. }
        )
    }
}

/// Everything the uploader needs from a document library. Static dispatch:
/// the daemon and the uploader are generic over it (`R: Remote`).
///
/// Implementations retry what retrying can fix (throttling, 5xx, dropped
/// connections, one expired access token) before returning an error.
pub trait Remote: Send + Sync {
    /// The drive id of `library` on `site`. Called once per drive; the
    /// caller caches the answer.
    fn resolve_drive(
        &self,
        site: &SiteUrl,
        library: &str,
    ) -> impl Future<Output = Result<String, RemoteError>> + Send;

    /// The item at `path`, or `None` when nothing is there.
    fn stat(
        &self,
        drive: &str,
        path: &RemotePath,
    ) -> impl Future<Output = Result<Option<RemoteItem>, RemoteError>> + Send;

    /// Creates the folder at `path` if missing (its parent must exist) and
    /// returns it; an existing folder is success.
    fn ensure_folder(
        &self,
        drive: &str,
        path: &RemotePath,
    ) -> impl Future<Output = Result<RemoteItem, RemoteError>> + Send;

    /// Uploads a small file in one request (zero-byte files must go this
    /// way) and sets its modification time, replacing what is there.
    fn upload_small(
        &self,
        drive: &str,
        path: &RemotePath,
        content: bytes::Bytes,
        mtime: DateTime<Utc>,
    ) -> impl Future<Output = Result<RemoteItem, RemoteError>> + Send;

    /// Opens a resumable upload to `path` that replaces what is there and
    /// carries `mtime` (one version per upload, no second call).
    fn create_session(
        &self,
        drive: &str,
        path: &RemotePath,
        mtime: DateTime<Utc>,
    ) -> impl Future<Output = Result<UploadSession, RemoteError>> + Send;

    /// Sends bytes `offset..offset + content.len()` of a `total`-byte file;
    /// with `pace` (bytes per second, the job's `bandwidth_limit`) the body
    /// goes out at that rate, a little at a time, not at line speed.
    fn put_fragment(
        &self,
        session_url: &str,
        offset: u64,
        content: bytes::Bytes,
        total: u64,
        pace: Option<u64>,
    ) -> impl Future<Output = Result<FragmentOutcome, RemoteError>> + Send;

    /// Where an open session stands (to resume after a crash or a 416).
    fn query_session(
        &self,
        session_url: &str,
    ) -> impl Future<Output = Result<UploadSession, RemoteError>> + Send;

    /// Cancels a session (its received bytes are discarded).
    fn delete_session(
        &self,
        session_url: &str,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// A delta link for "from now on" (`token=latest`): no items, one request.
    fn delta_latest(&self, drive: &str)
    -> impl Future<Output = Result<String, RemoteError>> + Send;

    /// One page of changes from a stored delta link or a page's next link.
    /// `410` is [`RemoteError::ResyncRequired`].
    fn delta_page(&self, link: &str)
    -> impl Future<Output = Result<DeltaPage, RemoteError>> + Send;

    /// One page of the children of folder `folder_id` (`next`: the previous
    /// page's next link, `None` for the first page).
    fn list_children(
        &self,
        drive: &str,
        folder_id: &str,
        next: Option<&str>,
    ) -> impl Future<Output = Result<ChildrenPage, RemoteError>> + Send;

    /// Moves and/or renames item `item_id` to `parent/name` on the server
    /// (the content stays; no upload). The parent folder must exist.
    fn move_item(
        &self,
        drive: &str,
        item_id: &str,
        parent: &RemotePath,
        name: &str,
    ) -> impl Future<Output = Result<RemoteItem, RemoteError>> + Send;
    /// Deletes the item `item_id` (to the site's recycle bin), for
    /// `delete = "mirror"`. An item that is already gone is success.
    fn delete_item(
        &self,
        drive: &str,
        item_id: &str,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_join_and_split() {
        let root = RemotePath::parse("Backups//reports/");
        assert_eq!(root.segments(), ["Backups", "reports"]);
        let file = root.join(&RemotePath::parse("a/b.txt"));
        assert_eq!(file.to_string(), "Backups/reports/a/b.txt");
        let (parent, name) = file.split_last().unwrap();
        assert_eq!(
            (parent.to_string().as_str(), name),
            ("Backups/reports/a", "b.txt")
        );
        assert!(RemotePath::root().split_last().is_none());
        assert_eq!(RemotePath::parse("ab/c").char_len(), 5);
    }

    #[test]
    fn session_debug_hides_the_url() {
        let s = UploadSession {
            url: "https://x/upload?tempauth=SECRET".into(),
            expires: None,
            next_offset: Some(0),
        };
        assert!(!format!("{s:?}").contains("SECRET"));
    }

    #[test]
    fn errors_are_classified() {
        let p = RemoteError::Permanent {
            status: 400,
            code: "invalidPath".into(),
        };
        assert_eq!(p.class(), ErrorClass::Permanent);
        assert_eq!(p.code(), Some((400, "invalidPath")));
        assert_eq!(RemoteError::Quota.class(), ErrorClass::Quota);
        assert_eq!(
            RemoteError::RetryAfter(Duration::from_secs(3)).class(),
            ErrorClass::RetryAfter(Duration::from_secs(3))
        );
        let login = RemoteError::Auth(AuthError::LoginNeeded {
            code: "invalid_grant".into(),
            aadsts: Some(70008),
        });
        assert_eq!(login.class(), ErrorClass::Reauth);
        assert!(login.to_string().contains("sharepush login"));

        // A 404 may be the drive itself: the caller checks the library.
        let missing = RemoteError::Permanent {
            status: 404,
            code: "itemNotFound".into(),
        };
        assert!(missing.is_not_found() && !missing.is_library_gone());
        let gone = RemoteError::LibraryNotFound {
            site: "https://contoso.sharepoint.com/sites/demo".into(),
            library: "Documents".into(),
            available: vec!["Archive".into(), "Site Assets".into()],
        };
        assert!(gone.is_library_gone() && !gone.is_not_found());
        assert_eq!(gone.class(), ErrorClass::Permanent);
        assert_eq!(
            gone.to_string(),
            "library \"Documents\" not found on site https://contoso.sharepoint.com/sites/demo \
             (libraries there: Archive, Site Assets)"
        );
    }
}
