//! CPU seconds of the processes a phase keeps busy, read from
//! `/proc/<pid>/stat` (Linux only: elsewhere every part reads as missing).

use std::{collections::BTreeMap, sync::OnceLock};

/// A process, or set of processes, whose CPU a phase reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The stack's API process.
    Api,
    /// The stack's worker processes, summed.
    Workers,
    /// Every `postgres` process of the server, backends that exited during
    /// the phase included (through the postmaster's reaped-children time).
    Postgres,
    /// The backends connected to the stack's database, alive at the end.
    PostgresBench,
    /// RabbitMQ's Erlang VM (`beam.smp`).
    RabbitMq,
    /// The S3 server (`s3s-fs`).
    S3,
    /// This process: the load, the polling and the in-process fake provider.
    Driver,
}

impl Part {
    /// Every part, in the order the table lists them.
    pub const ALL: [Self; 7] = [
        Self::Api,
        Self::Workers,
        Self::Postgres,
        Self::PostgresBench,
        Self::RabbitMq,
        Self::S3,
        Self::Driver,
    ];

    /// The row label of the part.
    pub fn label(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Workers => "worker(s)",
            Self::Postgres => "postgres, whole server",
            Self::PostgresBench => "postgres, the bench database's backends",
            Self::RabbitMq => "rabbitmq (beam.smp), whole server",
            Self::S3 => "s3 server (s3s-fs)",
            Self::Driver => "driver (load + fake provider)",
        }
    }
}

/// The processes to look for besides the services found by name.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Process ids of the stack's API processes.
    pub api: Vec<u32>,
    /// Process ids of the stack's workers.
    pub workers: Vec<u32>,
    /// The stack's database: its backends carry the name in their title.
    pub database: String,
}

/// CPU clock ticks per process id of each part found at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    parts: BTreeMap<Part, BTreeMap<u32, u64>>,
}

impl Snapshot {
    /// Reads every part now.
    pub fn take(targets: &Targets) -> Self {
        Self {
            parts: read_parts(targets),
        }
    }

    /// CPU seconds `part` spent from `start` to `self`: for each process
    /// alive at the end, its ticks less those it had at the start (all of
    /// them if it started since). `None` when the part was not found.
    pub fn seconds_since(&self, start: &Self, part: Part) -> Option<f64> {
        let end = self.parts.get(&part)?;
        let before = start.parts.get(&part);
        let ticks: u64 = end
            .iter()
            .map(|(pid, ticks)| {
                let then = before.and_then(|b| b.get(pid)).copied().unwrap_or(0);
                ticks.saturating_sub(then)
            })
            .sum();
        Some(ticks as f64 / clock_ticks().0)
    }
}

/// Clock ticks per second and how that was learnt: `getconf CLK_TCK`
/// (what `sysconf(_SC_CLK_TCK)` answers; this crate has no unsafe code to
/// call it), else the Linux default of 100, assumed.
pub fn clock_ticks() -> (f64, &'static str) {
    static TICKS: OnceLock<(f64, &'static str)> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .map_or((100.0, "assumed 100 (getconf CLK_TCK failed)"), |ticks| {
                (ticks, "from getconf CLK_TCK")
            })
    })
}

/// The fields of `/proc/<pid>/stat` the parts need.
#[cfg_attr(not(target_os = "linux"), expect(dead_code, reason = "Linux only"))]
#[derive(Debug, Clone)]
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: waited-for children that exited.
    children: u64,
}

#[cfg_attr(not(target_os = "linux"), expect(dead_code, reason = "Linux only"))]
fn parse_stat(text: &str) -> Option<Stat> {
    // The name sits in parentheses and may itself hold spaces or ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state) of proc(5): utime is field 14.
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

#[cfg(target_os = "linux")]
fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The command line of `pid` with its NULs as spaces.
#[cfg(target_os = "linux")]
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
fn read_parts(targets: &Targets) -> BTreeMap<Part, BTreeMap<u32, u64>> {
    let mut parts: BTreeMap<Part, BTreeMap<u32, u64>> = BTreeMap::new();
    let mut own = |part: Part, pids: &[u32]| {
        let ticks: BTreeMap<u32, u64> = pids
            .iter()
            .filter_map(|pid| Some((*pid, read_stat(*pid)?.own)))
            .collect();
        if !ticks.is_empty() {
            parts.insert(part, ticks);
        }
    };
    own(Part::Api, &targets.api);
    own(Part::Workers, &targets.workers);
    own(Part::Driver, &[std::process::id()]);

    let all: Vec<(u32, Stat)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect();
    let postgres: BTreeMap<u32, &Stat> = all
        .iter()
        .filter(|(_, stat)| stat.comm == "postgres")
        .map(|(pid, stat)| (*pid, stat))
        .collect();
    // The postmaster is the postgres process whose parent is not one; it
    // holds, as reaped-children time, the CPU of every backend that exited.
    if let Some((postmaster, stat)) = postgres
        .iter()
        .find(|(_, stat)| !postgres.contains_key(&stat.ppid))
    {
        let live: u64 = postgres.values().map(|stat| stat.own).sum();
        parts.insert(
            Part::Postgres,
            BTreeMap::from([(*postmaster, stat.children + live)]),
        );
    }
    let title = format!(" {} ", targets.database);
    let bench: BTreeMap<u32, u64> = postgres
        .iter()
        .filter(|(pid, _)| cmdline(**pid).contains(&title))
        .map(|(pid, stat)| (*pid, stat.own))
        .collect();
    if !bench.is_empty() {
        parts.insert(Part::PostgresBench, bench);
    }
    let named = |wanted: &str| -> BTreeMap<u32, u64> {
        all.iter()
            .filter(|(pid, stat)| {
                stat.comm == wanted
                    || cmdline(*pid)
                        .split(' ')
                        .next()
                        .and_then(|argv0| argv0.rsplit('/').next())
                        == Some(wanted)
            })
            .map(|(pid, stat)| (*pid, stat.own))
            .collect()
    };
    for (part, name) in [(Part::RabbitMq, "beam.smp"), (Part::S3, "s3s-fs")] {
        let found = named(name);
        if !found.is_empty() {
            parts.insert(part, found);
        }
    }
    parts
}

#[cfg(not(target_os = "linux"))]
fn read_parts(_targets: &Targets) -> BTreeMap<Part, BTreeMap<u32, u64>> {
    BTreeMap::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_parses() {
        let line = "4242 (tokio (rt) 1) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 9 0 1000 100000 200 18446744073709551615";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.comm, "tokio (rt) 1");
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.own, 300);
        assert_eq!(stat.children, 10);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_and_its_cpu_does_not_go_backwards() {
        let targets = Targets {
            api: Vec::new(),
            workers: Vec::new(),
            database: "no_such_database".to_owned(),
        };
        let start = Snapshot::take(&targets);
        let mut spin = 0_u64;
        for i in 0..5_000_000_u64 {
            spin = spin.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(spin, 1);
        let end = Snapshot::take(&targets);
        let seconds = end.seconds_since(&start, Part::Driver).expect("self");
        assert!(seconds >= 0.0, "{seconds}");
        assert!(end.seconds_since(&start, Part::Api).is_none());
    }
}
