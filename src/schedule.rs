//! Schedules: the crontab syntax administrators write, compiled once.
//!
//! Accepts 5-field crontab lines (`*/15 * * * *`, names such as `mon-fri` and
//! `jan` included) and `@hourly`, `@daily`, `@weekly`, `@monthly` (also
//! `@midnight`, `@yearly`, `@annually`), converts them to the 6-field form
//! (seconds first) that tokio-cron-scheduler expects, and answers "when is the
//! next run after t" for `check`, `status` and the daemon. Day of month and day
//! of week follow Vixie cron: when both are restricted a day matching *either*
//! runs the job; a field starting with `*` makes the pair an AND.
//!
//! Each field is validated here (so the error can say "minute must be 0-59"),
//! then evaluated by `croner`, the parser tokio-cron-scheduler itself uses.
//! Time is always passed in, never read here, so tests need no clock. This
//! module does not run anything: the daemon's ticks come from
//! [`crate::scheduler`], and the job task decides what a tick does.
//!
//! **Time zones.** A job's `timezone` is a [`Zone`]: an IANA name from the
//! database compiled in by chrono-tz, or the server's local zone (default).
//! [`Schedule::next_in`] answers in that zone with its offset, which is what
//! `check` and `status` print. Daylight saving time follows croner's rules
//! (tested for Europe/Berlin): a fixed time that the spring change skips
//! (`30 2 * * *` on 2026-03-29) runs once, at the first instant after the
//! gap (03:00 CEST); a wall-clock time the autumn change repeats runs once,
//! in its first pass (02:30 CEST on 2026-10-25); interval schedules have no
//! ticks in the skipped hour and tick through the repeated hour once.
//! [`Schedule::next_after`] guards croner where it answers a time in the
//! past from inside the repeated hour.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Local, LocalResult, SubsecRound as _, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// What a schedule may look like, appended to every parse error so the
/// administrator does not have to look it up.
pub const ACCEPTED: &str = "accepted: 5-field crontab (min hour dom month dow) or \
     @hourly, @daily, @weekly, @monthly";

/// What `timezone` accepts, appended to its errors.
pub const ZONE_ACCEPTED: &str = "an IANA time zone name like \"Europe/Berlin\" or \"UTC\", \
     or \"local\" (the default: the server's time zone, from TZ or /etc/localtime)";

/// The time zone a job's schedule is read in (`timezone = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// The server's local time zone (`TZ`, else `/etc/localtime`), as cron
    /// itself does; resolved when a time is computed, so a changed `TZ`
    /// takes effect at the next restart.
    #[default]
    Local,
    /// A zone from the IANA database compiled into the binary (chrono-tz),
    /// so a server set to UTC can still run a job at 02:30 Berlin time.
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Parses `timezone`: an IANA name, exactly as the database spells it
    /// (`Europe/Berlin`, `UTC`), or `local`. The error is the reason only;
    /// the config layer adds the file, key and [`ZONE_ACCEPTED`].
    pub fn parse(text: &str) -> Result<Zone, String> {
        let name = text.trim();
        if name.eq_ignore_ascii_case("local") {
            return Ok(Zone::Local);
        }
        if let Ok(tz) = name.parse::<chrono_tz::Tz>() {
            return Ok(Zone::Named(tz));
        }
        let hint = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| format!(" (did you mean {:?}?)", tz.name()))
            .unwrap_or_default();
        Err(format!("unknown time zone {text:?}{hint}"))
    }

    /// `local` or the IANA name, as `check` and `status` show it.
    pub fn name(self) -> &'static str {
        match self {
            Zone::Local => "local",
            Zone::Named(tz) => tz.name(),
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// What the user wrote, for display.
    pub expr: String,
    /// Six-field form (seconds first) for tokio-cron-scheduler.
    pub six_field: String,
    /// The compiled pattern that answers next-run questions.
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.six_field == other.six_field
    }
}

impl Eq for Schedule {}

/// Why an expression is not a schedule; its `Display` says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    /// The expression as written.
    pub expr: String,
    /// The specific problem, e.g. "minute must be 0-59".
    pub reason: String,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid cron expression {:?}: {}; {ACCEPTED}",
            self.expr, self.reason
        )
    }
}

impl std::error::Error for ScheduleError {}

/// One crontab field: its name for messages, its range, and its names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names mapped to `min + index`.
    names: &'static [&'static str],
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: WEEKDAYS,
    },
];

impl Schedule {
    /// Parse what an administrator wrote in `schedule = "..."`.
    ///
    /// Rejects rather than guesses: 6-field (seconds) input, Quartz extensions
    /// (`L`, `W`, `#`, `?`) and out-of-range values are errors, because a
    /// schedule that silently never fires loses backups.
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let err = |reason: String| ScheduleError {
            expr: expr.to_string(),
            reason,
        };
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(err("the expression is empty".into()));
        }
        let six_field = if let Some(nick) = trimmed.strip_prefix('@') {
            let fields = match nick.to_ascii_lowercase().as_str() {
                "yearly" | "annually" => "0 0 0 1 1 *",
                "monthly" => "0 0 0 1 * *",
                "weekly" => "0 0 0 * * 0",
                "daily" | "midnight" => "0 0 0 * * *",
                "hourly" => "0 0 * * * *",
                "reboot" => return Err(err("@reboot is not supported".into())),
                _ => return Err(err(format!("unknown shorthand @{nick}"))),
            };
            fields.to_string()
        } else {
            let parts: Vec<&str> = trimmed.split_whitespace().collect();
            match parts.len() {
                5 => {}
                6 => {
                    return Err(err(
                        "6 fields given (with seconds); schedules have minute resolution: \
                         use 5 fields"
                            .into(),
                    ));
                }
                n => return Err(err(format!("{n} fields given, need 5"))),
            }
            let mut out = vec!["0".to_string()];
            for (field, text) in FIELDS.iter().zip(&parts) {
                out.push(normalize_field(field, text).map_err(err)?);
            }
            // Vixie: a day field that *starts* with `*` (including `*/2`) makes
            // the day-of-month/day-of-week pair an AND. croner only treats a
            // bare `*` that way, so say AND explicitly with its `+` marker.
            let (dom, dow) = (parts[2], parts[4]);
            let star_ish = |s: &str| s.starts_with('*') && s != "*";
            if (star_ish(dom) && dow != "*") || (star_ish(dow) && dom != "*") {
                out[5] = format!("+{}", out[5]);
            }
            out.join(" ")
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(&six_field)
            .map_err(|e| err(e.to_string()))?;
        let schedule = Schedule {
            expr: trimmed.to_string(),
            six_field,
            cron,
        };
        // Accepted field by field, yet no date may match (`0 0 31 2 *`,
        // `0 0 30 2 *`): the job would run at startup and never again.
        // croner searches years ahead, so leap days still count.
        let start = DateTime::<Utc>::from_timestamp(946_684_800, 0).expect("2000-01-01 is valid");
        if schedule.next_after(start).is_none() {
            return Err(err(
                "no date matches it, so it would never run (a day the month never has, \
                 like February 30 or April 31?)"
                    .into(),
            ));
        }
        Ok(schedule)
    }

    /// The first run strictly after `t`, in `t`'s time zone (the daemon passes
    /// local time, tests pass UTC). `None` if the pattern never fires again
    /// (e.g. `0 0 31 2 *`), so callers can say so instead of hanging.
    ///
    /// Guards two things croner 3.0.1 gets wrong: it keeps `t`'s fraction
    /// of a second in the answer (so `t` is cut to whole seconds first), and
    /// in the hour a fall-back repeats it maps a repeated wall-clock time to
    /// its *first* instant even when `t` is already in the second pass, an
    /// answer in the past that a daemon would fire on again and again. Such
    /// an answer is skipped, keeping croner's own rule for the repeated
    /// hour: each wall-clock time runs once, in the first pass.
    pub fn next_after<Tz: TimeZone>(&self, t: DateTime<Tz>) -> Option<DateTime<Tz>> {
        let t = t.trunc_subsecs(0);
        let mut from = t.clone();
        // The overlap is an hour (two at most); each pass moves past one
        // repeated wall-clock time.
        for _ in 0..240 {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            if next > t {
                return Some(next);
            }
            match t.timezone().from_local_datetime(&next.naive_local()) {
                // Already run in the first pass: search on from its second.
                LocalResult::Ambiguous(_, later) if later > from => from = later,
                // Not an overlap: step on in real time.
                _ => from += chrono::Duration::minutes(1),
            }
        }
        None
    }

    /// The next `n` runs after `t`, for `sharepush check` and `status`.
    pub fn next_n<Tz: TimeZone>(&self, t: DateTime<Tz>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(n);
        let mut cur = t;
        while out.len() < n {
            match self.next_after(cur) {
                Some(next) => {
                    cur = next.clone();
                    out.push(next);
                }
                None => break,
            }
        }
        out
    }

    /// The first run strictly after the instant `t`, read in `zone`, with
    /// that zone's offset at the run (`2026-03-29T03:00:00+02:00`): what
    /// `check`, `status` and the daemon use.
    pub fn next_in(&self, zone: Zone, t: DateTime<Utc>) -> Option<DateTime<FixedOffset>> {
        self.next_n_in(zone, t, 1).into_iter().next()
    }

    /// The next `n` runs after the instant `t`, read in `zone`.
    pub fn next_n_in(&self, zone: Zone, t: DateTime<Utc>, n: usize) -> Vec<DateTime<FixedOffset>> {
        fn fixed<Tz: TimeZone>(v: Vec<DateTime<Tz>>) -> Vec<DateTime<FixedOffset>> {
            v.iter().map(DateTime::fixed_offset).collect()
        }
        match zone {
            Zone::Local => fixed(self.next_n(t.with_timezone(&Local), n)),
            Zone::Named(tz) => fixed(self.next_n(t.with_timezone(&tz), n)),
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

/// Check one field and rewrite names to numbers.
fn normalize_field(field: &Field, text: &str) -> Result<String, String> {
    let mut items = Vec::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("{} {text:?} has an empty list item", field.name));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let range_out = if range == "*" {
            "*".to_string()
        } else if let Some((a, b)) = range.split_once('-') {
            let (lo, hi) = (value(field, a)?, value(field, b)?);
            if lo > hi {
                // `mon-sun`: Sunday is 0, but also 7 (`mon-7`, `1-7`).
                let hint = if field.name == "day of week" && hi == 0 {
                    format!("; Sunday is also 7: write {a}-7")
                } else {
                    String::new()
                };
                return Err(format!(
                    "{} range {range} is reversed (write the smaller value first{hint})",
                    field.name
                ));
            }
            format!("{lo}-{hi}")
        } else {
            if step.is_some() {
                return Err(format!(
                    "{} {item:?}: a step needs a range (`*/n` or `a-b/n`)",
                    field.name
                ));
            }
            value(field, range)?.to_string()
        };
        let out = match step {
            None => range_out,
            Some(s) => {
                let n = number(s)
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{} step {s:?} must be a number >= 1", field.name))?;
                format!("{range_out}/{n}")
            }
        };
        items.push(out);
    }
    Ok(items.join(","))
}

/// Digits only, as crontab reads them: Rust's parse would also take a
/// leading `+`, which crontab refuses.
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One number or name within a field's range.
fn value(field: &Field, text: &str) -> Result<u32, String> {
    let range_msg = || {
        let names = match field.names.len() {
            0 => String::new(),
            _ => format!(
                " or {}-{}",
                field.names[0],
                field.names[field.names.len() - 1]
            ),
        };
        format!("{} must be {}-{}{names}", field.name, field.min, field.max)
    };
    if let Some(n) = number(text) {
        if n < field.min || n > field.max {
            return Err(range_msg());
        }
        return Ok(n);
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        return Ok(field.min + i as u32);
    }
    Err(format!(
        "{} {text:?} is not a number; {}",
        field.name,
        range_msg()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fmt(v: &[DateTime<Utc>]) -> Vec<String> {
        v.iter()
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .collect()
    }

    #[test]
    fn every_15_minutes_next_three() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(s.six_field, "0 */15 * * * *");
        let next = s.next_n(at("2024-03-01T10:07:30Z"), 3);
        assert_eq!(
            fmt(&next),
            [
                "2024-03-01 10:15:00",
                "2024-03-01 10:30:00",
                "2024-03-01 10:45:00"
            ]
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let t = at("2024-03-01T10:15:00Z");
        assert_eq!(s.next_after(t).unwrap(), at("2024-03-01T10:30:00Z"));
    }

    #[test]
    fn daily_runs_at_midnight() {
        let s = Schedule::parse("@daily").unwrap();
        assert_eq!(s.six_field, "0 0 0 * * *");
        assert_eq!(s.expr, "@daily");
        let next = s.next_n(at("2024-12-31T12:00:00Z"), 2);
        assert_eq!(fmt(&next), ["2025-01-01 00:00:00", "2025-01-02 00:00:00"]);
    }

    #[test]
    fn all_shorthands_compile() {
        for (nick, six) in [
            ("@hourly", "0 0 * * * *"),
            ("@daily", "0 0 0 * * *"),
            ("@midnight", "0 0 0 * * *"),
            ("@weekly", "0 0 0 * * 0"),
            ("@monthly", "0 0 0 1 * *"),
            ("@yearly", "0 0 0 1 1 *"),
            ("@annually", "0 0 0 1 1 *"),
            ("@HOURLY", "0 0 * * * *"),
        ] {
            assert_eq!(Schedule::parse(nick).unwrap().six_field, six, "{nick}");
        }
        let weekly = Schedule::parse("@weekly").unwrap();
        // 2024-03-01 is a Friday; the next Sunday is the 3rd.
        let next = weekly.next_after(at("2024-03-01T00:00:00Z")).unwrap();
        assert_eq!(next, at("2024-03-03T00:00:00Z"));
    }

    #[test]
    fn weekdays_at_three() {
        let s = Schedule::parse("0 3 * * 1-5").unwrap();
        // Friday 2024-03-01 04:00 -> Monday, Tuesday, Wednesday at 03:00.
        let next = s.next_n(at("2024-03-01T04:00:00Z"), 3);
        assert_eq!(
            fmt(&next),
            [
                "2024-03-04 03:00:00",
                "2024-03-05 03:00:00",
                "2024-03-06 03:00:00"
            ]
        );
    }

    #[test]
    fn names_are_rewritten_to_numbers() {
        let s = Schedule::parse("30 2 * JAN,jul mon-fri").unwrap();
        assert_eq!(s.six_field, "0 30 2 * 1,7 1-5");
    }

    #[test]
    fn day_of_month_or_day_of_week_like_vixie() {
        // Both restricted: the 13th OR any Friday.
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        let next = s.next_n(at("2024-09-01T00:00:00Z"), 3);
        assert_eq!(
            fmt(&next),
            [
                "2024-09-06 00:00:00", // Friday
                "2024-09-13 00:00:00", // the 13th (also a Friday)
                "2024-09-20 00:00:00", // Friday
            ]
        );
        // A day-of-month starting with `*` makes it an AND: odd days that are Mondays.
        let s = Schedule::parse("0 0 */2 * 1").unwrap();
        for t in s.next_n(at("2024-01-01T00:00:00Z"), 5) {
            assert_eq!(t.weekday(), chrono::Weekday::Mon, "{t}");
            assert_eq!(t.day() % 2, 1, "{t}");
        }
    }

    #[test]
    fn seven_is_sunday() {
        let s = Schedule::parse("0 0 * * 7").unwrap();
        let next = s.next_after(at("2024-03-01T00:00:00Z")).unwrap();
        assert_eq!(next, at("2024-03-03T00:00:00Z"));
    }

    /// A schedule no date matches would run the job once at startup and
    /// never again while every check looked healthy: refused, saying why.
    /// Leap days and either-day rules still pass.
    #[test]
    fn a_schedule_no_date_matches_is_refused() {
        for expr in ["0 0 31 2 *", "0 0 30 2 *", "15 4 31 4,6,9,11 *"] {
            let e = Schedule::parse(expr).unwrap_err();
            assert!(e.to_string().contains("would never run"), "{expr}: {e}");
            assert!(e.to_string().contains(expr), "{e}");
        }
        let leap = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at("2025-01-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        // February 31 or any Monday (vixie's either-day rule).
        assert!(Schedule::parse("0 0 31 2 mon").is_ok());
    }

    #[test]
    fn works_in_fixed_offset_zone() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        let tz = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
        let t = tz.with_ymd_and_hms(2024, 3, 1, 4, 0, 0).unwrap();
        let next = s.next_after(t).unwrap();
        assert_eq!(next, tz.with_ymd_and_hms(2024, 3, 2, 3, 0, 0).unwrap());
    }

    const BERLIN: Zone = Zone::Named(chrono_tz::Europe::Berlin);

    fn rfc(v: &[DateTime<FixedOffset>]) -> Vec<String> {
        v.iter().map(|t| t.to_rfc3339()).collect()
    }

    #[test]
    fn next_runs_are_in_the_jobs_zone_with_its_offset() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 12:00 UTC in January is 13:00 in Berlin: the next 02:30 is tomorrow's.
        let next = s.next_n_in(BERLIN, at("2026-01-10T12:00:00Z"), 2);
        assert_eq!(
            rfc(&next),
            ["2026-01-11T02:30:00+01:00", "2026-01-12T02:30:00+01:00"]
        );
        let kolkata = Zone::Named(chrono_tz::Asia::Kolkata);
        let next = s.next_in(kolkata, at("2026-01-10T12:00:00Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-01-11T02:30:00+05:30");
        assert_eq!(next, at("2026-01-10T21:00:00Z"));
    }

    /// Spring forward in Berlin (2026-03-29, 02:00 CET -> 03:00 CEST): a
    /// daily 02:30 does not exist that night. croner runs it once, at the
    /// first time after the gap (03:00 CEST), not twice and not never.
    #[test]
    fn a_fixed_time_in_the_spring_gap_runs_once_right_after_it() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let next = s.next_n_in(BERLIN, at("2026-03-28T12:00:00Z"), 3);
        assert_eq!(
            rfc(&next),
            [
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
        // Interval schedules just skip the missing hour.
        let s = Schedule::parse("*/30 * * * *").unwrap();
        let next = s.next_n_in(BERLIN, at("2026-03-29T00:45:00Z"), 2);
        assert_eq!(
            rfc(&next),
            ["2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]
        );
    }

    /// Fall back in Berlin (2026-10-25, 03:00 CEST -> 02:00 CET): 02:30
    /// happens twice. A daily 02:30 runs once, at the first one.
    #[test]
    fn a_fixed_time_in_the_autumn_overlap_runs_once() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let next = s.next_n_in(BERLIN, at("2026-10-24T12:00:00Z"), 2);
        assert_eq!(
            rfc(&next),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
    }

    /// Fall back in Berlin (2026-10-25, 03:00 CEST -> 02:00 CET) for an
    /// interval schedule: croner runs the repeated wall-clock hour once, in
    /// its first pass (02:45 CEST is followed by 03:00 CET, 75 minutes
    /// later). A next run is never at or before the time asked from: croner
    /// alone answers 02:15 CEST when asked at 02:00 CET, an hour in the past,
    /// on which a daemon would fire again and again.
    #[test]
    fn next_is_always_later_across_the_overlap() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let mut t = at("2026-10-24T23:00:00Z");
        let mut runs = Vec::new();
        while t < at("2026-10-25T02:00:00Z") {
            let next = s.next_in(BERLIN, t).unwrap();
            assert!(next > t, "{t} -> {next}");
            runs.push(next.to_rfc3339());
            t = next.with_timezone(&Utc);
        }
        assert_eq!(
            runs,
            [
                "2026-10-25T01:15:00+02:00",
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T01:45:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:15:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:45:00+02:00",
                "2026-10-25T03:00:00+01:00",
            ]
        );
        // Asked from the second pass: the end of the repeated hour.
        for from in [
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:05:00Z",
            "2026-10-25T01:59:59Z",
        ] {
            let next = s.next_in(BERLIN, at(from)).unwrap();
            assert_eq!(
                next.to_rfc3339(),
                "2026-10-25T03:00:00+01:00",
                "from {from}"
            );
        }
        // From anywhere in the second pass a fixed 02:30 is tomorrow's.
        let s = Schedule::parse("30 2 * * *").unwrap();
        for from in [
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:29:00Z",
            "2026-10-25T01:45:00Z",
        ] {
            let next = s.next_in(BERLIN, at(from)).unwrap();
            assert_eq!(
                next.to_rfc3339(),
                "2026-10-26T02:30:00+01:00",
                "from {from}"
            );
        }
        // Fractions of a second do not leak into the answer.
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let t = at("2026-01-10T12:07:30.75Z");
        assert_eq!(
            s.next_in(BERLIN, t).unwrap().to_rfc3339(),
            "2026-01-10T13:15:00+01:00"
        );
    }

    #[test]
    fn invalid_expressions_say_why_and_what_is_accepted() {
        for (expr, reason) in [
            ("61 * * * *", "minute must be 0-59"),
            ("* 24 * * *", "hour must be 0-23"),
            ("* * 0 * *", "day of month must be 1-31"),
            ("* * * 13 *", "month must be 1-12 or jan-dec"),
            ("* * * * 8", "day of week must be 0-7 or sun-sat"),
            ("* * *", "3 fields given, need 5"),
            ("* * * * * *", "use 5 fields"),
            ("@sometimes", "unknown shorthand @sometimes"),
            ("", "empty"),
            ("5-1 * * * *", "reversed"),
            ("0 0 * * mon-sun", "Sunday is also 7: write mon-7"),
            ("*/0 * * * *", "step \"0\" must be a number >= 1"),
            ("5/10 * * * *", "a step needs a range"),
            ("* * L * *", "is not a number"),
            ("1,,2 * * * *", "empty list item"),
            ("@reboot", "@reboot is not supported"),
            // crontab refuses a sign; Rust's integer parse would not.
            ("+5 * * * *", "minute \"+5\" is not a number"),
            ("*/+2 * * * *", "step \"+2\" must be a number >= 1"),
        ] {
            let e = Schedule::parse(expr).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains(reason), "{expr:?}: {shown}");
            assert!(shown.contains(ACCEPTED), "{expr:?}: {shown}");
            assert!(shown.contains(&format!("{expr:?}")), "{expr:?}: {shown}");
        }
    }

    #[test]
    fn display_matches_the_documented_format() {
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid cron expression \"61 * * * *\": minute must be 0-59; accepted: 5-field \
             crontab (min hour dom month dow) or @hourly, @daily, @weekly, @monthly"
        );
    }
}
