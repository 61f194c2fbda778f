//! The README is checked, not trusted: the quick start is run as written and its output
//! compared with the README's; every example command line in a `bash` block is parsed by
//! the real clap definition of its binary (so a renamed or removed flag fails here); the
//! claims it makes about inputs are tried; and the demo runs against this build.

use crate::support::{bin, have_tool, stderr, stdout, Scene};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

fn have_jq() -> bool {
    Command::new("jq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The fenced blocks of one language, in order.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line.trim_start() == format!("```{lang}") => cur = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// One `$ command` of a console block with its expected output lines.
struct Step {
    command: String,
    expected: Vec<String>,
}

fn steps(block: &str) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for line in block.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.push(Step {
                command: cmd.to_string(),
                expected: Vec::new(),
            });
        } else if let (Some(rest), Some(last)) = (line.strip_prefix("> "), out.last_mut()) {
            last.command.push('\n');
            last.command.push_str(rest);
        } else if let Some(last) = out.last_mut() {
            last.expected.push(line.to_string());
        }
    }
    out
}

/// `…` in an expected line matches any text; a line that is only `…` matches any number
/// of lines.
fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split('…').collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let mut rest = actual;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else {
                return false;
            };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "…" => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((e, rest)) => {
            !actual.is_empty() && line_matches(e, actual[0]) && lines_match(rest, &actual[1..])
        }
    }
}

#[test]
fn matcher_understands_ellipses() {
    assert!(line_matches("/…/corral-home", "/tmp/x/corral-home"));
    assert!(!line_matches("/…/corral-home", "/tmp/x/other"));
    assert!(line_matches("worker-shout-…", "worker-shout-20261201T1-ab"));
    assert!(line_matches("a … b … c", "a 1 b 2 c"));
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&e(&["x", "…", "z"]), &["x", "1", "2", "z"]));
    assert!(lines_match(&e(&["…"]), &[]));
    assert!(!lines_match(&e(&["x"]), &["x", "y"]));
}

/// The quick start, run as written in a scratch directory with this build's binaries first
/// on PATH; each command's output (stdout and stderr) must match what the README shows.
#[test]
fn quick_start_runs_as_written() {
    if !have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let text = readme();
    let block = blocks(&text, "console")
        .into_iter()
        .find(|b| b.contains("corral init"))
        .expect("the quick start block");
    let steps = steps(&block);
    assert!(steps.len() >= 15, "{} steps", steps.len());
    let mut script = String::from("set -u\n");
    for (i, st) in steps.iter().enumerate() {
        script.push_str(&format!("echo '@@step {i}@@'\n{}\n", st.command));
    }
    script.push_str("echo '@@end@@'\n");
    let dir = tempfile::tempdir().unwrap();
    let bins = bin("corral").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let mut c = Command::new("bash");
    {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
    }
    c.args(["-c", &format!("exec 2>&1\n{script}")])
        .env_clear()
        .env("PATH", path)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null());
    let reaper = crate::support::procs::Reaper::default();
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    reaper.group(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("the quick start finished within 3 minutes")
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        all.contains("@@end@@"),
        "the quick start stopped early:\n{all}"
    );
    for (i, st) in steps.iter().enumerate() {
        let start = format!("@@step {i}@@\n");
        let from = all.find(&start).unwrap() + start.len();
        let to = all[from..].find("@@").map(|n| from + n).unwrap();
        let actual: Vec<&str> = all[from..to].lines().collect();
        assert!(
            lines_match(&st.expected, &actual),
            "step {i}: `{}`\n--- expected\n{}\n--- actual\n{}\n--- whole run\n{all}",
            st.command,
            st.expected.join("\n"),
            actual.join("\n")
        );
    }
}

const BINARIES: [&str; 9] = [
    "corral",
    "spawn-worker",
    "heartbeat",
    "heartbeat-monitor",
    "stop-worker",
    "cleanup-zombies",
    "worker-monitor",
    "recalc-budget",
    "task-queue",
];

/// The wrapper scripts and the binary each passes its arguments to (None: its own flags).
const SCRIPTS: [(&str, Option<&str>); 6] = [
    ("spawn-worker.sh", Some("spawn-worker")),
    ("cleanup-zombie-workers.sh", Some("cleanup-zombies")),
    ("recalculate-token-budget.sh", Some("recalc-budget")),
    ("worker-monitor.sh", Some("worker-monitor")),
    ("validate-and-write-worker-spec.sh", None),
    ("create-worker.sh", None),
];

/// Splits a shell line into words: quotes removed, `$VAR` and `$(…)` replaced by `1` (a
/// value every flag accepts), comments and redirections dropped, pipelines split.
fn commands_of(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    let mut skip_next_word = false;
    let flush =
        |word: &mut String, in_word: &mut bool, cmds: &mut Vec<Vec<String>>, skip: &mut bool| {
            if *in_word {
                if *skip {
                    *skip = false;
                } else if let Some(c) = cmds.last_mut() {
                    c.push(std::mem::take(word));
                }
            }
            word.clear();
            *in_word = false;
        };
    while let Some(ch) = chars.next() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '$') => {
                in_word = true;
                if chars.peek() == Some(&'(') {
                    let mut depth = 0;
                    for c in chars.by_ref() {
                        match c {
                            '(' => depth += 1,
                            ')' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                } else {
                    if chars.peek() == Some(&'{') {
                        chars.next();
                    }
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '}')
                    {
                        chars.next();
                    }
                }
                word.push('1');
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, ' ' | '\t') => flush(&mut word, &mut in_word, &mut cmds, &mut skip_next_word),
            (None, '|' | ';' | '&') => {
                flush(&mut word, &mut in_word, &mut cmds, &mut skip_next_word);
                cmds.push(Vec::new());
            }
            (None, '>' | '<') => {
                // `2>&1`: the 2 names a descriptor, it is no argument.
                if in_word && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                flush(&mut word, &mut in_word, &mut cmds, &mut skip_next_word);
                while chars.peek().is_some_and(|c| *c == '>' || *c == '&') {
                    chars.next();
                }
                skip_next_word = true;
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    flush(&mut word, &mut in_word, &mut cmds, &mut skip_next_word);
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// `[--flag value]` in usage-style examples: the brackets go, the words stay.
fn unbracket(w: &str) -> String {
    w.trim_start_matches('[').trim_end_matches(']').to_string()
}

/// Arguments a binary reads from the environment when absent (`heartbeat` takes its worker
/// id from `$CORRAL_WORKER_ID`) are optional in examples, as they are where they run.
fn env_optional(cmd: clap::Command) -> clap::Command {
    let ids: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_some())
        .map(|a| a.get_id().clone())
        .collect();
    let mut cmd = ids
        .into_iter()
        .fold(cmd, |c, id| c.mut_arg(id, |a| a.required(false)));
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, env_optional);
    }
    cmd
}

#[test]
fn every_example_command_parses_with_the_real_flags() {
    let text = readme();
    let commands: std::collections::HashMap<String, clap::Command> = corral::cmd::all_commands()
        .into_iter()
        .map(|c| (c.get_name().to_string(), c))
        .collect();
    let mut checked = 0;
    for block in blocks(&text, "bash") {
        let joined = block.replace("\\\n", " ");
        for line in joined.lines() {
            for words in commands_of(line) {
                // The command may follow env assignments, `sudo`, `sudo -u USER`, or a cron
                // schedule.
                // The command word comes after env assignments, `sudo [-u USER]`, `exec`,
                // or a cron schedule; binaries by their bare name, scripts by any path.
                let mut start = 0;
                while start < words.len() {
                    let w = words[start].as_str();
                    let assignment = w.split_once('=').is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                    let cron = w.chars().all(|c| "0123456789*/,-".contains(c));
                    if assignment || cron || matches!(w, "sudo" | "exec" | "time" | "nohup") {
                        start += 1;
                    } else if w == "-u" && start > 0 && words[start - 1] == "sudo" {
                        start += 2;
                    } else {
                        break;
                    }
                }
                let Some(first) = words.get(start) else {
                    continue;
                };
                let first_base = first.rsplit('/').next().unwrap_or(first);
                if !(BINARIES.contains(&first.as_str())
                    || SCRIPTS.iter().any(|(s, _)| *s == first_base))
                {
                    continue;
                }
                let base = words[start].rsplit('/').next().unwrap().to_string();
                let args: Vec<String> = words[start + 1..].iter().map(|w| unbracket(w)).collect();
                let target = if BINARIES.contains(&base.as_str()) {
                    Some(base.clone())
                } else {
                    let (script, target) = SCRIPTS.iter().find(|(s, _)| *s == base).unwrap();
                    let found = walkdir::WalkDir::new(repo().join("scripts"))
                        .into_iter()
                        .filter_map(|e| e.ok())
                        .any(|e| e.file_name() == *script);
                    assert!(
                        found,
                        "README names scripts/…/{script}, which does not exist"
                    );
                    target.map(String::from)
                };
                checked += 1;
                let Some(target) = target else { continue };
                let cmd = env_optional(commands[&target].clone());
                let mut argv = vec![target.clone()];
                argv.extend(args.iter().cloned());
                if let Err(e) = cmd.try_get_matches_from(&argv) {
                    use clap::error::ErrorKind;
                    assert!(
                        matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion),
                        "README example `{line}` does not parse as {target} {args:?}:\n{e}"
                    );
                }
            }
        }
    }
    assert!(checked > 80, "only {checked} example commands found");
}

#[test]
fn readme_claims_hold() {
    let text = readme();
    for bad in ["DESIGN.md", "seed 0", "seed-0", "seed 000", "(seed"] {
        assert!(
            !text.contains(bad),
            "README refers to {bad:?}, which is not in the repository"
        );
    }
    assert!(text.contains("### The runbook"), "the runbook is explained");
    assert!(repo().join("LICENSE").is_file());
    assert!(std::fs::read_to_string(repo().join("LICENSE"))
        .unwrap()
        .starts_with("MIT License"));
    assert!(text.contains("cargo install --locked --path ."));
    for f in [
        "scripts/systemd/corral-heartbeat-monitor.service",
        "scripts/systemd/heartbeat-monitor.env.example",
        "scripts/crontab.example",
    ] {
        assert!(text.contains(f.rsplit('/').next().unwrap()), "{f}");
        assert!(repo().join(f).is_file(), "{f}");
    }
    let unit =
        std::fs::read_to_string(repo().join("scripts/systemd/corral-heartbeat-monitor.service"))
            .unwrap();
    for needed in [
        "User=corral",
        "/usr/local/bin/heartbeat-monitor",
        "EnvironmentFile=/etc/corral/heartbeat-monitor.env",
        "UMask=",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
        assert!(
            text.contains("corral") && text.contains("/usr/local"),
            "README explains {needed}"
        );
    }
    // "not JSON -> exit 6": what the README pipes in really is refused, and valid JSON of
    // any shape (the old example, `[1,2]`) is accepted.
    let s = Scene::new();
    let line = text
        .lines()
        .find(|l| l.contains("not JSON -> exit 6"))
        .expect("the payload example");
    let payload = line.split('\'').nth(1).expect("a quoted payload");
    let out = s.run_stdin(
        "task-queue",
        &["enqueue", "--class", "cpu", "--payload-file", "-"],
        payload.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(6), "{payload}: {}", stderr(&out));
    let out = s.run_stdin(
        "task-queue",
        &["enqueue", "--class", "cpu", "--payload-file", "-"],
        b"[1,2]",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "[1,2] is JSON: {}",
        stderr(&out)
    );
}

/// The demo's logic against this build: it waits for the queue to drain before stopping the
/// pool, so nothing is requeued (it read `.by_state`, which does not exist, and stopped the
/// pool mid-work).
#[test]
fn the_demo_drains_the_queue_and_requeues_nothing() {
    if !have_tool(have_jq(), "jq (apt-get install jq)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bins = bin("corral").parent().unwrap().to_path_buf();
    let mut c = Command::new(repo().join("scripts/demo"));
    {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
    }
    c.env("CORRAL_DEMO_BIN_DIR", &bins)
        .env("TMPDIR", dir.path())
        .env_remove("CORRAL_HOME")
        .env_remove("COMMIT_RELAY_HOME")
        .stdin(Stdio::null());
    let out = crate::support::run_with_timeout(&mut c, Duration::from_secs(180));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("demo: 12 of 12 tasks completed, 0 requeued"),
        "{text}"
    );
    assert!(text.contains("waiting for the queue to drain"), "{text}");
}
