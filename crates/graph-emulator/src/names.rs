//! The names and paths SharePoint refuses (graph-api.md §8).
//!
//! Pure checks on decoded names and server-relative paths; they return the
//! documented `400 invalidRequest` with inner `invalidPath` or
//! `pathIsTooLong`. Looking names up (case-insensitively) is `store`'s job.

use crate::error::GraphError;

/// Characters SharePoint refuses anywhere in a name.
const FORBIDDEN_CHARS: &[char] = &['"', '*', ':', '<', '>', '?', '/', '\\', '|'];

/// Longest allowed decoded server-relative path is this minus one.
pub const MAX_PATH_CHARS: usize = 400;

fn invalid(name: &str, why: &str) -> GraphError {
    GraphError::bad_request(format!("The name '{name}' is not allowed: {why}")).inner("invalidPath")
}

/// Check one item name about to be created (or renamed to).
pub fn check_name(name: &str, at_library_root: bool, is_folder: bool) -> Result<(), GraphError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(invalid(name, "empty or relative name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| FORBIDDEN_CHARS.contains(c) || c.is_control())
    {
        return Err(invalid(name, &format!("character {c:?} is not allowed")));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(invalid(name, "leading or trailing space"));
    }
    if name.ends_with('.') {
        return Err(invalid(name, "trailing period"));
    }
    let lower = name.to_lowercase();
    if lower == ".lock" || lower == "desktop.ini" {
        return Err(invalid(name, "reserved name"));
    }
    let stem = lower.split('.').next().unwrap_or("");
    let reserved_device = matches!(stem, "con" | "prn" | "aux" | "nul")
        || (stem.len() == 4
            && (stem.starts_with("com") || stem.starts_with("lpt"))
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved_device {
        return Err(invalid(name, "reserved device name"));
    }
    if name.starts_with("~$") {
        return Err(invalid(name, "names starting with ~$ are not allowed"));
    }
    if lower.contains("_vti_") {
        return Err(invalid(name, "_vti_ is not allowed in names"));
    }
    if at_library_root && is_folder && lower == "forms" {
        return Err(invalid(name, "a folder named forms at the library root"));
    }
    Ok(())
}

/// Check the whole decoded server-relative path (site and library segments
/// included).
pub fn check_path_len(server_relative: &str) -> Result<(), GraphError> {
    let n = server_relative.chars().count();
    if n >= MAX_PATH_CHARS {
        return Err(GraphError::bad_request(format!(
            "The path is {n} characters long; the limit is {}",
            MAX_PATH_CHARS - 1
        ))
        .inner("pathIsTooLong"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_names() {
        for name in [
            "a\"b",
            "a*b",
            "a:b",
            "a<b",
            "a>b",
            "a?b",
            "a/b",
            "a\\b",
            "a|b",
            " a",
            "a ",
            "a.",
            ".lock",
            "CON",
            "con.txt",
            "PRN",
            "AUX.md",
            "NUL",
            "COM0",
            "com9.log",
            "LPT1",
            "lpt0.x",
            "desktop.ini",
            "Desktop.INI",
            "~$doc.docx",
            "x_vti_y",
            "_VTI_",
            "",
            ".",
            "..",
        ] {
            assert!(
                check_name(name, false, false).is_err(),
                "{name:?} should be refused"
            );
        }
    }

    #[test]
    fn accepted_names() {
        for name in [
            "a.txt",
            "CONSOLE",
            "com10",
            "lpt",
            "forms",
            ".hidden",
            "a b",
            "~a",
            "x$",
            "ünï",
            "＂＊：",
        ] {
            assert!(
                check_name(name, false, false).is_ok(),
                "{name:?} should pass"
            );
        }
        assert!(check_name("forms", true, false).is_ok());
        assert!(check_name("Forms", true, true).is_err());
        assert!(check_name("forms", false, true).is_ok());
    }

    #[test]
    fn path_length_boundary() {
        assert!(check_path_len(&"a".repeat(399)).is_ok());
        let e = check_path_len(&"a".repeat(400)).unwrap_err();
        assert_eq!(e.inner, Some("pathIsTooLong"));
    }
}
