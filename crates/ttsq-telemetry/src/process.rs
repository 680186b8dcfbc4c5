//! The standard `process_*` series (CPU seconds, resident and virtual
//! memory, open and maximum file descriptors, threads, start time), read
//! from `/proc/self` at each scrape. Linux only: elsewhere the collector
//! yields nothing. Read by hand rather than through the `prometheus` crate's
//! `process` feature, which pulls in `procfs` and counts CPU in whole
//! seconds.

use std::path::Path;

use prometheus::{
    Counter, Gauge, IntGauge,
    core::{Collector, Desc},
    proto::MetricFamily,
};

/// Clock ticks per second of the CPU times and the start time in
/// `/proc/[pid]/stat`: `USER_HZ`, fixed at 100 by the kernel's user ABI on
/// every architecture Linux builds this for (x86-64, arm64).
const USER_HZ: f64 = 100.0;

/// The `process_*` series of this process.
pub(crate) struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

impl ProcessCollector {
    // Constant names and help texts: a failure is a programming error caught
    // by the first test that renders them.
    pub(crate) fn new() -> Self {
        let int_gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid metric");
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid metric");
        let resident = int_gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = int_gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = int_gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = int_gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let threads = int_gauge("process_threads", "Number of OS threads in the process.");
        let descs = [
            cpu.desc(),
            start_time.desc(),
            resident.desc(),
            virtual_memory.desc(),
            open_fds.desc(),
            max_fds.desc(),
            threads.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Self {
            descs,
            cpu,
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            threads,
            start_time,
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(sample) = Sample::read(Path::new("/proc")) else {
            return Vec::new();
        };
        // A counter only goes up; the kernel's CPU time does too.
        let cpu = sample.cpu_seconds - self.cpu.get();
        if cpu > 0.0 {
            self.cpu.inc_by(cpu);
        }
        self.start_time.set(sample.start_time_seconds);
        self.resident.set(sample.resident_bytes);
        self.virtual_memory.set(sample.virtual_bytes);
        self.threads.set(sample.threads);
        if let Some(open) = sample.open_fds {
            self.open_fds.set(open);
        }
        if let Some(max) = sample.max_fds {
            self.max_fds.set(max);
        }
        let mut families = Vec::new();
        families.extend(self.cpu.collect());
        families.extend(self.start_time.collect());
        families.extend(self.resident.collect());
        families.extend(self.virtual_memory.collect());
        families.extend(self.threads.collect());
        if sample.open_fds.is_some() {
            families.extend(self.open_fds.collect());
        }
        if sample.max_fds.is_some() {
            families.extend(self.max_fds.collect());
        }
        families
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl Sample {
    /// Reads the process's own files under `proc` (`/proc`); `None` where
    /// there is no such file system.
    fn read(proc: &Path) -> Option<Self> {
        let stat = Stat::parse(&std::fs::read_to_string(proc.join("self/stat")).ok()?)?;
        let boot_time = boot_time(&std::fs::read_to_string(proc.join("stat")).ok()?)?;
        let resident_kib = resident_kib(&std::fs::read_to_string(proc.join("self/status")).ok()?)?;
        let open_fds = std::fs::read_dir(proc.join("self/fd"))
            .ok()
            .map(|entries| i64::try_from(entries.count()).unwrap_or(i64::MAX));
        let max_fds = std::fs::read_to_string(proc.join("self/limits"))
            .ok()
            .and_then(|limits| max_open_files(&limits));
        Some(Self {
            cpu_seconds: (stat.utime + stat.stime) as f64 / USER_HZ,
            start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / USER_HZ,
            resident_bytes: resident_kib.saturating_mul(1024),
            virtual_bytes: stat.virtual_bytes,
            threads: stat.threads,
            open_fds,
            max_fds,
        })
    }
}

/// The fields of `/proc/[pid]/stat` we use (proc(5)).
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: i64,
    start_ticks: u64,
    virtual_bytes: i64,
}

impl Stat {
    fn parse(text: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces or
        // parentheses itself: the fields after the last `)` start at field 3.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3).copied();
        Some(Self {
            utime: field(14)?.parse().ok()?,
            stime: field(15)?.parse().ok()?,
            threads: field(20)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
            virtual_bytes: field(23)?.parse().ok()?,
        })
    }
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `VmRSS` of `/proc/[pid]/status`, in KiB.
fn resident_kib(status: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/[pid]/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name_whatever_it_holds() {
        let text = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1517 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 1234567890 5120 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 1260 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            Stat::parse(text),
            Some(Stat {
                utime: 250,
                stime: 75,
                threads: 9,
                start_ticks: 123_456,
                virtual_bytes: 1_234_567_890,
            })
        );
        assert_eq!(Stat::parse("4242 (cut short) S 1"), None);
    }

    #[test]
    fn boot_time_resident_memory_and_the_fd_limit_are_read_from_their_files() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            resident_kib("Name:\tttsq\nVmRSS:\t   20480 kB\n"),
            Some(20_480)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95698                95698                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files  unlimited  unlimited  files"),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_alive_now() {
        let sample = Sample::read(Path::new("/proc")).expect("a /proc on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(sample.start_time_seconds <= now + 1.0, "{sample:?}");
        assert!(sample.start_time_seconds > now - 86_400.0, "{sample:?}");
        assert!(sample.resident_bytes > 1024 * 1024, "{sample:?}");
        assert!(sample.threads >= 1, "{sample:?}");
        assert!(sample.open_fds.is_some_and(|n| n >= 3), "{sample:?}");
        assert!(sample.max_fds.is_some_and(|n| n >= 64), "{sample:?}");
    }
}
