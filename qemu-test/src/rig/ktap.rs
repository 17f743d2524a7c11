//! KTAP (KUnit's test output) as the kernel prints it on the console.
//!
//! Each suite is a nested subtest:
//!
//! ```text
//!     KTAP version 1
//!     # Subtest: virtio_balloon_rs_mm
//!     1..3
//!     ok 1 memory_sizes_are_consistent
//!     not ok 2 event_counters_are_reported
//! ...
//! not ok 2 virtio_balloon_rs_mm
//! ```

/// Result of one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// Passed (`ok`, including `# SKIP`ped cases, which are listed in `skipped`).
    pub ok: bool,
    /// Reported as skipped.
    pub skipped: bool,
}

/// Result of one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    /// Suite name (`# Subtest:`).
    pub name: String,
    /// The suite's own result line; `None` if it never finished.
    pub ok: Option<bool>,
    /// Its cases, in order.
    pub cases: Vec<Case>,
}

fn result_line(line: &str) -> Option<(bool, String, bool)> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        return None;
    };
    // "<number> <name>[ # SKIP ...]"
    let rest = rest.split_once(' ').map(|(_, n)| n)?;
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, d),
        None => (rest, ""),
    };
    Some((ok, name.trim().to_string(), directive.starts_with("SKIP")))
}

/// `line` without the `[   12.345678] ` timestamp `CONFIG_PRINTK_TIME` puts
/// in front of kernel messages.
pub fn strip_timestamp(line: &str) -> &str {
    let Some(rest) = line.strip_prefix('[') else {
        return line;
    };
    match rest.split_once("] ") {
        Some((t, msg)) if t.trim().parse::<f64>().is_ok() => msg,
        _ => line,
    }
}

/// Parses every suite found in `lines` (console lines, in order, with or
/// without timestamps).
pub fn parse<S: AsRef<str>>(lines: &[S]) -> Vec<Suite> {
    let mut suites: Vec<Suite> = Vec::new();
    let mut open: Option<Suite> = None;
    for raw in lines {
        let raw = strip_timestamp(raw.as_ref());
        let nested = raw.starts_with("    ") || raw.starts_with('\t');
        let line = raw.trim();
        if let Some(name) = line.strip_prefix("# Subtest: ") {
            if nested {
                if let Some(s) = open.take() {
                    suites.push(s);
                }
                open = Some(Suite {
                    name: name.trim().to_string(),
                    ok: None,
                    cases: Vec::new(),
                });
            }
            continue;
        }
        let Some((ok, name, skipped)) = result_line(line) else {
            continue;
        };
        match (&mut open, nested) {
            (Some(s), true) => s.cases.push(Case { name, ok, skipped }),
            (Some(s), false) if s.name == name => {
                s.ok = Some(ok);
                if let Some(s) = open.take() {
                    suites.push(s);
                }
            }
            _ => {}
        }
    }
    suites.extend(open);
    suites
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
KTAP version 1
1..2
    KTAP version 1
    # Subtest: alpha
    # speed: normal
    1..2
    # one.speed: normal
    ok 1 one
    not ok 2 two
# alpha: pass:1 fail:1 skip:0 total:2
not ok 1 alpha
    KTAP version 1
    # Subtest: beta
    1..1
    ok 1 only # SKIP not here
ok 2 beta
    KTAP version 1
    # Subtest: gamma
    1..1
";

    #[test]
    fn suites_cases_and_results() {
        let lines: Vec<&str> = SAMPLE.lines().collect();
        let s = parse(&lines);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "alpha");
        assert_eq!(s[0].ok, Some(false));
        assert_eq!(
            s[0].cases,
            [
                Case {
                    name: "one".into(),
                    ok: true,
                    skipped: false
                },
                Case {
                    name: "two".into(),
                    ok: false,
                    skipped: false
                },
            ]
        );
        assert_eq!(s[1].ok, Some(true));
        assert!(s[1].cases[0].skipped);
        // A suite that never printed its result line is unfinished.
        assert_eq!(s[2].name, "gamma");
        assert_eq!(s[2].ok, None);
    }

    #[test]
    fn timestamps_are_ignored() {
        let lines: Vec<String> = SAMPLE
            .lines()
            .enumerate()
            .map(|(i, l)| format!("[{:>5}.{:06}] {l}", i, i * 7))
            .collect();
        assert_eq!(parse(&lines), parse(&SAMPLE.lines().collect::<Vec<_>>()));
        assert_eq!(strip_timestamp("[    4.802669]     ok 1 x"), "    ok 1 x");
        assert_eq!(strip_timestamp("[not a time] x"), "[not a time] x");
    }

    #[test]
    fn unrelated_console_lines_are_ignored() {
        let s = parse(&["ok, whatever", "random ok 1 text", "BALLOON-GUEST-READY"]);
        assert!(s.is_empty());
    }
}
