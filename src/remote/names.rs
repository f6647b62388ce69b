//! Names SharePoint refuses (graph-api.md section 8), and what to do about
//! them per the job's `invalid_names` setting.
//!
//! - `encode` (default): characters SharePoint refuses become their
//!   full-width look-alikes (`" * : < > ? \ |` -> `＂ ＊ ： ＜ ＞ ？ ＼ ｜`),
//!   control characters their Unicode control pictures (`␀`...), a leading or
//!   trailing space `␠`, a trailing period `．`, a leading `~$` `～$`, as
//!   rclone does. It is reversible ([`decode`]): a name that already
//!   contains one of those substitutes gets it quoted with `‛`, also as
//!   rclone does. Reserved names that no character swap can fix (`CON`,
//!   `desktop.ini`, `_vti_`, a root folder `forms`...) are skipped and
//!   reported.
//! - `skip`: every refused name is reported and its file left out.
//!
//! Also the whole-path limit: the decoded server-relative path (site and
//! library included) must stay under 400 characters; longer paths are
//! reported, never attempted.
//!
//! Pure functions; no I/O. The uploader applies them, `state` records skips.

use std::borrow::Cow;
use std::fmt;

use super::RemotePath;
use crate::config::InvalidNames;

/// The decoded server-relative path must be shorter than this.
pub const MAX_PATH_CHARS: usize = 400;

/// Quotes a literal substitute character so [`decode`] keeps it.
const QUOTE: char = '‛';

/// Characters SharePoint refuses anywhere in a name (besides `/`, which a
/// Unix name cannot contain), with their look-alikes.
const SWAPS: [(char, char); 8] = [
    ('"', '＂'),
    ('*', '＊'),
    (':', '：'),
    ('<', '＜'),
    ('>', '＞'),
    ('?', '？'),
    ('\\', '＼'),
    ('|', '｜'),
];

const SPACE_PICTURE: char = '␠';
const FULLWIDTH_PERIOD: char = '．';
const FULLWIDTH_TILDE: char = '～';

/// Why SharePoint would refuse a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    /// Contains a character SharePoint refuses.
    Character(char),
    /// Starts or ends with a space.
    Space,
    /// Ends with a period.
    TrailingPeriod,
    /// Starts with `~$` (Office lock files).
    TildeDollar,
    /// A reserved name (`CON`, `LPT1.txt`, `.lock`, `desktop.ini`).
    Reserved,
    /// Contains `_vti_`.
    Vti,
    /// A folder named `forms` at the library root.
    FormsAtRoot,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Character(c) => write!(f, "SharePoint refuses the character {c:?}"),
            NameProblem::Space => f.write_str("SharePoint refuses leading or trailing spaces"),
            NameProblem::TrailingPeriod => f.write_str("SharePoint refuses a trailing period"),
            NameProblem::TildeDollar => f.write_str("SharePoint refuses names starting with ~$"),
            NameProblem::Reserved => f.write_str("a name SharePoint reserves"),
            NameProblem::Vti => f.write_str("SharePoint refuses _vti_ in names"),
            NameProblem::FormsAtRoot => {
                f.write_str("SharePoint reserves a folder named forms at the library root")
            }
        }
    }
}

/// The first reason SharePoint would refuse `name` (a file or folder name,
/// `at_library_root` when its parent is the library root).
pub fn check(name: &str, at_library_root: bool, is_folder: bool) -> Result<(), NameProblem> {
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || SWAPS.iter().any(|(bad, _)| bad == c) || *c == '/')
    {
        return Err(NameProblem::Character(c));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(NameProblem::Space);
    }
    if name.ends_with('.') {
        return Err(NameProblem::TrailingPeriod);
    }
    if name.starts_with("~$") {
        return Err(NameProblem::TildeDollar);
    }
    check_reserved(name, at_library_root, is_folder)
}

/// The refusals no character swap can fix.
fn check_reserved(name: &str, at_library_root: bool, is_folder: bool) -> Result<(), NameProblem> {
    let lower = name.to_lowercase();
    if lower == ".lock" || lower == "desktop.ini" {
        return Err(NameProblem::Reserved);
    }
    let stem = lower.split('.').next().unwrap_or("");
    let device = matches!(stem, "con" | "prn" | "aux" | "nul")
        || (stem.len() == 4
            && (stem.starts_with("com") || stem.starts_with("lpt"))
            && stem.as_bytes()[3].is_ascii_digit());
    if device {
        return Err(NameProblem::Reserved);
    }
    if lower.contains("_vti_") {
        return Err(NameProblem::Vti);
    }
    if at_library_root && is_folder && lower == "forms" {
        return Err(NameProblem::FormsAtRoot);
    }
    Ok(())
}

/// What [`decode`] turns `c` back into at position `i` of `chars`, if
/// anything: encoding must quote a literal `c` exactly then.
fn decodes_to(chars: &[char], i: usize) -> Option<char> {
    let c = chars[i];
    let last = i + 1 == chars.len();
    if let Some((ascii, _)) = SWAPS.iter().find(|(_, wide)| *wide == c) {
        return Some(*ascii);
    }
    match c {
        '\u{2400}'..='\u{241F}' => char::from_u32(c as u32 - 0x2400),
        '\u{2421}' => Some('\u{7f}'),
        SPACE_PICTURE if i == 0 || last => Some(' '),
        FULLWIDTH_PERIOD if last => Some('.'),
        FULLWIDTH_TILDE if i == 0 && chars.get(1) == Some(&'$') => Some('~'),
        _ => None,
    }
}

/// Maps a name SharePoint would refuse to one it accepts, reversibly (see
/// the module docs). Names that need no change come back borrowed. Fails
/// for reserved names no character swap can fix.
pub fn encode(
    name: &str,
    at_library_root: bool,
    is_folder: bool,
) -> Result<Cow<'_, str>, NameProblem> {
    let chars: Vec<char> = name.chars().collect();
    let needs_quote = |i: usize| chars[i] == QUOTE || decodes_to(&chars, i).is_some();
    let clean = check(name, at_library_root, is_folder).is_ok();
    if clean && !(0..chars.len()).any(needs_quote) {
        return Ok(Cow::Borrowed(name));
    }
    let mut out = String::with_capacity(name.len() + 8);
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == n;
        if let Some((_, wide)) = SWAPS.iter().find(|(bad, _)| *bad == c) {
            out.push(*wide);
        } else if (c as u32) < 0x20 {
            out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}'));
        } else if c == '\u{7f}' {
            out.push('\u{2421}');
        } else if c.is_control() {
            // C1 controls have no look-alike; such names are reported.
            return Err(NameProblem::Character(c));
        } else if c == ' ' && (first || last) {
            out.push(SPACE_PICTURE);
        } else if c == '.' && last {
            out.push(FULLWIDTH_PERIOD);
        } else if c == '~' && first && chars.get(1) == Some(&'$') {
            out.push(FULLWIDTH_TILDE);
        } else {
            if needs_quote(i) {
                out.push(QUOTE);
            }
            out.push(c);
        }
    }
    check_reserved(&out, at_library_root, is_folder)?;
    Ok(Cow::Owned(out))
}

/// The local name an encoded name came from (the inverse of [`encode`]).
pub fn decode(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    // Positions are judged on the encoded name without its quotes, the
    // same characters `encode` judged them on.
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == QUOTE && i + 1 < chars.len() {
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        match decodes_to(&chars, i) {
            Some(d) => out.push(d),
            None => out.push(c),
        }
        i += 1;
    }
    out
}

/// A local relative path mapped to remote names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedPath {
    /// The remote path relative to the job's folder.
    pub remote: RemotePath,
    /// True when some segment had to be encoded (worth a log line).
    pub encoded: bool,
}

/// Why a path cannot be uploaded under its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathProblem {
    /// The offending segment, as it is locally.
    pub segment: String,
    pub problem: NameProblem,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid name {:?}: {}", self.segment, self.problem)
    }
}

/// Maps every segment of the `/`-separated local path `rel` (a file, so its
/// last segment is a file name) following `policy`. `job_at_root` says the
/// job's folder is the library root (where `forms` folders are reserved).
pub fn map_path(
    rel: &str,
    policy: InvalidNames,
    job_at_root: bool,
) -> Result<MappedPath, PathProblem> {
    let segments: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = Vec::with_capacity(segments.len());
    let mut encoded = false;
    for (i, seg) in segments.iter().enumerate() {
        let at_root = job_at_root && i == 0;
        let is_folder = i + 1 < segments.len();
        let fail = |problem| PathProblem {
            segment: seg.to_string(),
            problem,
        };
        match policy {
            InvalidNames::Skip => {
                check(seg, at_root, is_folder).map_err(fail)?;
                out.push(seg.to_string());
            }
            InvalidNames::Encode => {
                let name = encode(seg, at_root, is_folder).map_err(fail)?;
                encoded |= matches!(name, Cow::Owned(_));
                out.push(name.into_owned());
            }
        }
    }
    Ok(MappedPath {
        remote: RemotePath::from_segments(out),
        encoded,
    })
}

/// Length of the decoded server-relative path SharePoint checks:
/// `/sites/Name/Shared Documents/folder/.../name`, in characters. The site
/// path is percent-decoded (the config writes it as a URL). The default library's
/// URL segment is "Shared Documents"; other libraries are assumed to use
/// their name (the service has the last word: it answers `pathIsTooLong`).
pub fn server_relative_len(site_path: &str, library: &str, path: &RemotePath) -> usize {
    let library_segment = if library.eq_ignore_ascii_case("Documents") {
        "Shared Documents"
    } else {
        library
    };
    let site = percent_encoding::percent_decode_str(site_path.trim_end_matches('/'));
    site.decode_utf8_lossy().chars().count() + 1 + library_segment.chars().count() + path.char_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refused_names_are_found() {
        for (name, problem) in [
            ("a:b", NameProblem::Character(':')),
            ("a|b", NameProblem::Character('|')),
            ("tab\there", NameProblem::Character('\t')),
            (" a", NameProblem::Space),
            ("a ", NameProblem::Space),
            ("a.", NameProblem::TrailingPeriod),
            ("~$doc.docx", NameProblem::TildeDollar),
            ("CON", NameProblem::Reserved),
            ("lpt1.txt", NameProblem::Reserved),
            ("desktop.ini", NameProblem::Reserved),
            (".lock", NameProblem::Reserved),
            ("x_VTI_y", NameProblem::Vti),
        ] {
            assert_eq!(check(name, false, false), Err(problem), "{name:?}");
        }
        assert_eq!(check("forms", true, true), Err(NameProblem::FormsAtRoot));
        for ok in ["a.txt", "CONSOLE", "com10", "~a", "forms", ".hidden", "ünï"] {
            assert_eq!(check(ok, false, false), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn encoding_uses_look_alikes_like_rclone() {
        for (name, want) in [
            ("notes: draft?.txt", "notes： draft？.txt"),
            ("a<b>c\"d*e\\f|g", "a＜b＞c＂d＊e＼f｜g"),
            (" lead", "␠lead"),
            ("trail ", "trail␠"),
            ("end.", "end．"),
            ("~$lock.docx", "～$lock.docx"),
            ("bell\u{7}", "bell␇"),
            ("plain.txt", "plain.txt"),
        ] {
            let e = encode(name, false, false).unwrap();
            assert_eq!(e, want, "{name:?}");
            assert_eq!(check(&e, false, false), Ok(()), "{e:?} must be accepted");
            assert_eq!(decode(&e), name);
        }
        assert!(matches!(
            encode("plain.txt", false, false),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(encode("CON.txt", false, false), Err(NameProblem::Reserved));
        assert_eq!(encode("forms", true, true), Err(NameProblem::FormsAtRoot));
    }

    #[test]
    fn literal_look_alikes_are_quoted_so_decoding_is_exact() {
        let e = encode("already：wide", false, false).unwrap();
        assert_eq!(e, "already‛：wide");
        assert_eq!(decode(&e), "already：wide");
        let e = encode("‛quote", false, false).unwrap();
        assert_eq!(decode(&e), "‛quote");
    }

    /// Every rule of graph-api.md section 8, as an administrator meets
    /// it: each is refused by [`check`] (so `skip` reports it), and
    /// `encode` either maps it to a name that passes and decodes back, or
    /// reports it when no swap can fix it.
    #[test]
    fn every_section_8_rule_is_enforced_under_both_policies() {
        let mut fixable: Vec<String> = ["\"", "*", ":", "<", ">", "?", "\\", "|"]
            .iter()
            .map(|c| format!("a{c}b"))
            .collect();
        fixable.extend(
            [
                " lead",
                "trail ",
                "  both  ",
                "end.",
                "dots..",
                "~$doc.docx",
                "~$",
            ]
            .map(String::from),
        );
        for name in &fixable {
            assert!(check(name, false, false).is_err(), "{name:?} passes check");
            let e = encode(name, false, false).unwrap_or_else(|p| panic!("{name:?}: {p}"));
            assert_eq!(check(&e, false, false), Ok(()), "{name:?} -> {e:?}");
            assert_eq!(decode(&e), *name);
            let skipped = map_path(&format!("d/{name}"), InvalidNames::Skip, false);
            assert!(skipped.is_err(), "{name:?} not reported under skip");
        }

        let mut devices: Vec<String> = ["CON", "PRN", "AUX", "NUL"].map(String::from).to_vec();
        for n in 0..=9 {
            devices.push(format!("COM{n}"));
            devices.push(format!("LPT{n}"));
        }
        let mut reserved = vec![
            ".lock".to_string(),
            ".LOCK".into(),
            "desktop.ini".into(),
            "Desktop.INI".into(),
            "_vti_".into(),
            "a_vti_b.txt".into(),
            "x_VtI_".into(),
        ];
        for d in &devices {
            for variant in [d.clone(), d.to_lowercase(), mixed_case(d)] {
                for ext in ["", ".txt", ".tar.gz"] {
                    reserved.push(format!("{variant}{ext}"));
                }
            }
        }
        for name in &reserved {
            for (at_root, folder) in [(false, false), (true, true), (false, true)] {
                assert!(
                    check(name, at_root, folder).is_err(),
                    "{name:?} passes check"
                );
                assert!(
                    encode(name, at_root, folder).is_err(),
                    "{name:?} encoded as {:?}",
                    encode(name, at_root, folder)
                );
            }
        }
        // Near misses are names like any other.
        for ok in [
            "CONS",
            "com10",
            "lpt",
            "xcon",
            "con_",
            "desktop.ini.bak",
            "_vti",
            "vti_",
        ] {
            assert_eq!(check(ok, false, false), Ok(()), "{ok:?}");
        }

        for forms in ["forms", "Forms", "FORMS"] {
            assert_eq!(check(forms, true, true), Err(NameProblem::FormsAtRoot));
            assert!(encode(forms, true, true).is_err());
            assert_eq!(check(forms, true, false), Ok(()), "a file named {forms}");
            assert_eq!(check(forms, false, true), Ok(()), "deeper than the root");
            assert!(map_path(&format!("{forms}/a.txt"), InvalidNames::Skip, true).is_err());
            assert!(map_path(&format!("{forms}/a.txt"), InvalidNames::Encode, true).is_err());
            assert!(map_path(&format!("x/{forms}/a.txt"), InvalidNames::Skip, true).is_ok());
        }
    }

    /// `Com1` for `COM1`: every other letter lowercase.
    fn mixed_case(s: &str) -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 1 {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    }

    /// rclone's answer to a local file already named with a look-alike
    /// next to one with the character it stands for: the literal one is
    /// quoted, so the two never share a remote name.
    #[test]
    fn a_look_alike_and_its_character_never_share_a_remote_name() {
        for (ascii, wide) in [
            ("a\"b", "a＂b"),
            ("a*b", "a＊b"),
            ("a:b", "a：b"),
            ("a<b", "a＜b"),
            ("a>b", "a＞b"),
            ("a?b", "a？b"),
            ("a\\b", "a＼b"),
            ("a|b", "a｜b"),
            (" a", "␠a"),
            ("a ", "a␠"),
            ("a.", "a．"),
            ("~$a", "～$a"),
            ("a\u{7}", "a␇"),
        ] {
            let (e1, e2) = (
                encode(ascii, false, false).unwrap(),
                encode(wide, false, false).unwrap(),
            );
            assert_ne!(e1, e2, "{ascii:?} and {wide:?}");
            assert_eq!(decode(&e1), ascii);
            assert_eq!(decode(&e2), wide);
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(name in "[ -.0-~\u{2400}-\u{2421}＂＊：？．～‛ü]{1,12}") {
            match encode(&name, false, false) {
                Ok(e) => {
                    prop_assert_eq!(decode(&e), name.clone());
                    prop_assert_eq!(check(&e, false, false), Ok(()));
                }
                Err(p) => prop_assert!(matches!(p, NameProblem::Reserved | NameProblem::Vti)),
            }
        }
    }

    #[test]
    fn paths_map_segment_by_segment() {
        let m = map_path("reports/q1: final/a?.txt", InvalidNames::Encode, false).unwrap();
        assert_eq!(m.remote.to_string(), "reports/q1： final/a？.txt");
        assert!(m.encoded);
        let m = map_path("a/b.txt", InvalidNames::Encode, false).unwrap();
        assert!(!m.encoded);
        let e = map_path("ok/bad|dir/x.txt", InvalidNames::Skip, false).unwrap_err();
        assert_eq!(e.segment, "bad|dir");
        assert!(e.to_string().contains("invalid name"), "{e}");
        assert!(map_path("forms/x.txt", InvalidNames::Encode, true).is_err());
        assert!(map_path("forms/x.txt", InvalidNames::Encode, false).is_ok());
        assert!(
            map_path("forms", InvalidNames::Encode, true).is_ok(),
            "a file named forms"
        );
    }

    #[test]
    fn server_relative_length_counts_site_and_library() {
        let p = RemotePath::parse("Backups/a.txt");
        // "/sites/demo" + "/Shared Documents" + "/Backups" + "/a.txt"
        assert_eq!(
            server_relative_len("/sites/demo", "Documents", &p),
            11 + 17 + 8 + 6
        );
        assert_eq!(server_relative_len("", "Scans", &p), 6 + 8 + 6);
        // The config spells a site path as a URL (`%20` for a space);
        // SharePoint counts the decoded path: "/sites/Team Site", "/Ärger".
        assert_eq!(
            server_relative_len("/sites/Team%20Site", "Documents", &p),
            16 + 17 + 8 + 6
        );
        assert_eq!(
            server_relative_len("/sites/%C3%84rger", "Scans", &p),
            12 + 6 + 8 + 6
        );
    }
}
