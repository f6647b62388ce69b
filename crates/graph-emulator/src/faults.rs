//! Fault injection: the textual grammar shared by `--faults` and
//! `POST /_emulator/faults`, and the per-request decision.
//!
//! ```text
//! spec   := item ("," item)*
//! item   := "seed=" N | rule
//! rule   := class ":" kind (":" param)*
//! class  := token | graph | delta | upload | session | download | any
//! kind   := 429 | 500 | 502 | 503 | 504 | 507 | 404 | 410 | resync
//!         | drop | drop-reply | html | latency | expire-token | expire-session
//! param  := count=N | rate=F | after=N | retry-after=N | ms=N
//! ```
//!
//! `upload` is a fragment PUT on an upload URL; `session` is any request to
//! an upload URL; `delta` is a delta query (also `graph`); `any` is every
//! request but the admin API. A rule with neither `count` nor `rate` fires on
//! every matching request; `after=N` lets N matching requests through first.
//! Randomness (`rate`) comes from a xorshift generator seeded by `seed`
//! (default 1), so a failing run replays.
//!
//! This module decides; `server` carries the decision out (status replies,
//! dropping the connection, sleeping, expiring tokens or sessions).

use std::time::Duration;

/// The spec does not parse; says which item and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fault spec item {item:?}: {reason}")]
pub struct FaultSpecError {
    /// The offending comma-separated item.
    pub item: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `/{tenant}/oauth2/v2.0/*`.
    Token,
    /// `/v1.0/*`.
    Graph,
    /// Delta queries (also `Graph`).
    Delta,
    /// Fragment PUTs on an upload URL.
    Upload,
    /// Any request on an upload URL.
    Session,
    /// Content downloads.
    Download,
    /// Everything but `/_emulator/`.
    Any,
}

impl RouteClass {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "token" => Self::Token,
            "graph" => Self::Graph,
            "delta" => Self::Delta,
            "upload" | "upload-fragment" => Self::Upload,
            "session" => Self::Session,
            "download" => Self::Download,
            "any" | "*" => Self::Any,
            _ => return None,
        })
    }

    /// Name used in counters and the request log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Graph => "graph",
            Self::Delta => "delta",
            Self::Upload => "upload",
            Self::Session => "session",
            Self::Download => "download",
            Self::Any => "any",
        }
    }
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Reply with this status in the route's error shape.
    Status(u16),
    /// Drop the connection mid-body.
    Drop,
    /// Handle the request, then drop the connection instead of replying
    /// (the change happened; the client does not know).
    DropReply,
    /// Reply `200 OK` with an HTML page, as a captive portal or a proxy's
    /// sign-in page does; the request is not handled.
    Html,
    /// Delay the request.
    Latency,
    /// Expire every access token, then handle the request.
    ExpireToken,
    /// Expire every upload session, then handle the request.
    ExpireSession,
}

/// One parsed rule with its remaining budget.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Requests it applies to.
    pub class: RouteClass,
    /// What it does.
    pub kind: FaultKind,
    /// Remaining firings; `None` is unlimited.
    pub count: Option<u64>,
    /// Probability of firing per matching request.
    pub rate: Option<f64>,
    /// Matching requests still to let through before firing.
    pub after: u64,
    /// `Retry-After` seconds for 429/503.
    pub retry_after: Option<u64>,
    /// Latency in ms.
    pub ms: u64,
}

/// Parse a spec into rules and an optional seed.
pub fn parse(spec: &str) -> Result<(Vec<Rule>, Option<u64>), FaultSpecError> {
    let mut rules = Vec::new();
    let mut seed = None;
    for item in spec
        .split([',', ';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let err = |reason: &str| FaultSpecError {
            item: item.to_string(),
            reason: reason.to_string(),
        };
        if let Some(v) = item.strip_prefix("seed=") {
            seed = Some(v.parse().map_err(|_| err("seed must be an integer"))?);
            continue;
        }
        let mut parts = item.split(':').map(str::trim);
        let class = parts.next().unwrap_or_default().to_ascii_lowercase();
        let class = RouteClass::parse(&class).ok_or_else(|| {
            err("unknown class (token, graph, delta, upload, session, download, any)")
        })?;
        let kind = parts
            .next()
            .ok_or_else(|| err("missing kind"))?
            .to_ascii_lowercase();
        let kind = match kind.as_str() {
            "drop" => FaultKind::Drop,
            "drop-reply" => FaultKind::DropReply,
            "html" => FaultKind::Html,
            "latency" => FaultKind::Latency,
            "expire-token" => FaultKind::ExpireToken,
            "expire-session" => FaultKind::ExpireSession,
            "resync" => FaultKind::Status(410),
            n => match n.parse::<u16>() {
                Ok(s @ (404 | 410 | 429 | 500 | 502 | 503 | 504 | 507)) => FaultKind::Status(s),
                _ => {
                    return Err(err(
                        "unknown kind (429, 500, 502, 503, 504, 507, 404, 410, resync, drop, drop-reply, html, latency, expire-token, expire-session)",
                    ));
                }
            },
        };
        let mut rule = Rule {
            class,
            kind,
            count: None,
            rate: None,
            after: 0,
            retry_after: None,
            ms: 0,
        };
        for param in parts {
            let (k, v) = param
                .split_once('=')
                .ok_or_else(|| err("parameters are key=value"))?;
            let int = || v.parse::<u64>().map_err(|_| err("expected an integer"));
            match k {
                "count" => rule.count = Some(int()?),
                "after" => rule.after = int()?,
                "retry-after" => rule.retry_after = Some(int()?),
                "ms" => rule.ms = int()?,
                "rate" => {
                    let r: f64 = v.parse().map_err(|_| err("rate is a number in 0..=1"))?;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(err("rate is a number in 0..=1"));
                    }
                    rule.rate = Some(r);
                }
                _ => {
                    return Err(err(
                        "unknown parameter (count, rate, after, retry-after, ms)",
                    ));
                }
            }
        }
        if kind == FaultKind::Latency && rule.ms == 0 {
            return Err(err("latency needs ms=N"));
        }
        rules.push(rule);
    }
    Ok((rules, seed))
}

/// What to do with one request.
#[derive(Debug, Default, Clone)]
pub struct Decision {
    /// Sleep this long first.
    pub latency: Duration,
    /// Then, at most one action.
    pub action: Option<Action>,
    /// Expire all access tokens before handling.
    pub expire_tokens: bool,
    /// Expire all upload sessions before handling.
    pub expire_sessions: bool,
}

/// A fault that replaces the normal reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reply with this status (and `Retry-After`, when given).
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// Drop the connection mid-body.
    Drop,
    /// Handle the request, then drop the connection.
    DropReply,
    /// Reply 200 with an HTML page instead of handling the request.
    Html,
}

/// The active rules and the seeded generator.
#[derive(Debug)]
pub struct Faults {
    rules: Vec<Rule>,
    rng: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            rng: seed_state(1),
        }
    }
}

fn seed_state(seed: u64) -> u64 {
    // splitmix64 of the seed, never zero (xorshift's fixed point).
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

impl Faults {
    /// Add the rules of a spec (a `seed=` item reseeds).
    pub fn add(&mut self, spec: &str) -> Result<(), FaultSpecError> {
        let (rules, seed) = parse(spec)?;
        if let Some(s) = seed {
            self.rng = seed_state(s);
        }
        self.rules.extend(rules);
        Ok(())
    }

    /// Remove every rule (the seed stays).
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Rules still active.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn next_f64(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Decide for a request belonging to `classes` (`Any` is implied).
    pub fn decide(&mut self, classes: &[RouteClass]) -> Decision {
        let mut d = Decision::default();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if rule.class != RouteClass::Any && !classes.contains(&rule.class) {
                continue;
            }
            if rule.count == Some(0) {
                continue;
            }
            let is_action = matches!(
                rule.kind,
                FaultKind::Status(_) | FaultKind::Drop | FaultKind::DropReply | FaultKind::Html
            );
            if is_action && d.action.is_some() {
                continue;
            }
            if rule.after > 0 {
                self.rules[i].after -= 1;
                continue;
            }
            if let Some(rate) = rule.rate
                && self.next_f64() >= rate
            {
                continue;
            }
            let rule = &mut self.rules[i];
            if let Some(c) = &mut rule.count {
                *c -= 1;
            }
            match rule.kind {
                FaultKind::Status(status) => {
                    d.action = Some(Action::Status {
                        status,
                        retry_after: rule.retry_after,
                    });
                }
                FaultKind::Drop => d.action = Some(Action::Drop),
                FaultKind::DropReply => d.action = Some(Action::DropReply),
                FaultKind::Html => d.action = Some(Action::Html),
                FaultKind::Latency => d.latency += Duration::from_millis(rule.ms),
                FaultKind::ExpireToken => d.expire_tokens = true,
                FaultKind::ExpireSession => d.expire_sessions = true,
            }
        }
        self.rules.retain(|r| r.count != Some(0));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_readme_example() {
        let (rules, seed) =
            parse("upload:429:retry-after=2:count=3, graph:503:rate=0.05, seed=42").unwrap();
        assert_eq!(seed, Some(42));
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].class, RouteClass::Upload);
        assert_eq!(rules[0].kind, FaultKind::Status(429));
        assert_eq!((rules[0].retry_after, rules[0].count), (Some(2), Some(3)));
        assert_eq!(rules[1].rate, Some(0.05));
    }

    #[test]
    fn rejects_bad_items_with_the_item_named() {
        for bad in [
            "nope:429",
            "graph:418",
            "graph",
            "graph:429:count=x",
            "any:latency",
            "graph:503:rate=2",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.item.is_empty(), "{bad}");
        }
    }

    #[test]
    fn count_and_after_limit_firings() {
        let mut f = Faults::default();
        f.add("upload:drop:after=1:count=2").unwrap();
        let fired: Vec<bool> = (0..5)
            .map(|_| f.decide(&[RouteClass::Upload]).action.is_some())
            .collect();
        assert_eq!(fired, [false, true, true, false, false]);
        assert!(f.rules().is_empty());
        assert!(f.decide(&[RouteClass::Graph]).action.is_none());
    }

    #[test]
    fn rate_is_reproducible_with_a_seed() {
        let run = || {
            let mut f = Faults::default();
            f.add("seed=7,graph:503:rate=0.3").unwrap();
            (0..100)
                .map(|_| f.decide(&[RouteClass::Graph]).action.is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let n = a.iter().filter(|x| **x).count();
        assert!((15..=45).contains(&n), "{n} firings of 100 at rate 0.3");
    }

    #[test]
    fn latency_adds_up_and_does_not_block_an_action() {
        let mut f = Faults::default();
        f.add("any:latency:ms=5,graph:latency:ms=7,graph:500:count=1")
            .unwrap();
        let d = f.decide(&[RouteClass::Graph]);
        assert_eq!(d.latency, Duration::from_millis(12));
        assert_eq!(
            d.action,
            Some(Action::Status {
                status: 500,
                retry_after: None
            })
        );
    }
}
