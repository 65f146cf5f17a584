//! Where the machine's CPU went while the benchmark measured: the load generator shares the
//! cores with the server, Valkey and Postgres it measures, so a latency figure means little
//! without knowing how busy the machine was and who kept it busy.
//!
//! Read from Linux's `/proc`: each party's time on a CPU and time spent runnable but waiting for
//! one (`/proc/<pid>/task/*/schedstat`, summed over threads), and the machine's busy share
//! (`/proc/stat`). Valkey's wait is the figure that matters most: it is single-threaded and
//! every search waits whenever it waits. Elsewhere (no `/proc`, a Valkey on another host) the
//! parties that cannot be read are left out of the report.

use std::collections::HashMap;
use std::time::Instant;

/// Time on a CPU and time runnable but waiting for one, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sched {
    on_cpu_ns: u64,
    waiting_ns: u64,
}

/// The first two fields of a `schedstat` file.
fn parse_schedstat(text: &str) -> Option<Sched> {
    let mut fields = text.split_whitespace();
    Some(Sched {
        on_cpu_ns: fields.next()?.parse().ok()?,
        waiting_ns: fields.next()?.parse().ok()?,
    })
}

/// Busy and total time of the whole machine (in clock ticks) from the first line of
/// `/proc/stat`: user, nice, system, idle, iowait, irq, softirq, steal; idle and iowait are
/// not busy.
fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if ticks.len() < 5 {
        return None;
    }
    let total: u64 = ticks.iter().sum();
    Some((total - ticks[3] - ticks[4], total))
}

/// A process's threads, summed; `None` when it cannot be read (gone, or not on this host).
fn process_sched(pid: u32) -> Option<Sched> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = Sched::default();
    for task in tasks.flatten() {
        let Some(s) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .as_deref()
            .and_then(parse_schedstat)
        else {
            continue;
        };
        sum.on_cpu_ns += s.on_cpu_ns;
        sum.waiting_ns += s.waiting_ns;
    }
    Some(sum)
}

/// A process's command name, if it runs on this host.
fn comm(pid: u32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim().to_owned())
}

/// Every process whose command name is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).is_some_and(|c| c == name))
        .collect()
}

/// How a party's processes are found.
#[derive(Debug)]
enum Processes {
    Pid(u32),
    Named(&'static str),
}

/// Who is measured.
#[derive(Debug)]
struct Party {
    name: &'static str,
    processes: Processes,
    /// Whether its run-queue wait is reported too.
    show_wait: bool,
}

impl Party {
    fn read(&self) -> HashMap<u32, Sched> {
        let pids = match self.processes {
            Processes::Pid(pid) => vec![pid],
            Processes::Named(name) => pids_named(name),
        };
        pids.into_iter()
            .filter_map(|pid| Some((pid, process_sched(pid)?)))
            .collect()
    }
}

/// The parties of one benchmark run.
#[derive(Debug)]
pub(crate) struct Probe {
    parties: Vec<Party>,
}

/// What the probe read at one instant.
#[derive(Debug)]
pub(crate) struct Snapshot {
    at: Instant,
    machine: Option<(u64, u64)>,
    parties: Vec<HashMap<u32, Sched>>,
}

impl Probe {
    /// The `courier` children (named), this process (the load generator), Valkey's process
    /// when it runs on this host (`valkey_pid` from `INFO server`, kept only if that pid is a
    /// Valkey or Redis server here) and every Postgres process.
    pub(crate) fn new(children: &[(&'static str, u32)], valkey_pid: Option<u32>) -> Self {
        let party = |name, processes, show_wait| Party {
            name,
            processes,
            show_wait,
        };
        let mut parties: Vec<Party> = children
            .iter()
            .map(|(name, pid)| party(*name, Processes::Pid(*pid), false))
            .collect();
        parties.push(party(
            "load generator",
            Processes::Pid(std::process::id()),
            false,
        ));
        let local_valkey = valkey_pid
            .filter(|pid| comm(*pid).is_some_and(|c| c.contains("valkey") || c.contains("redis")));
        if let Some(pid) = local_valkey {
            parties.push(party("Valkey", Processes::Pid(pid), true));
        }
        parties.push(party("Postgres", Processes::Named("postgres"), false));
        Self { parties }
    }

    /// This process (named `label`) and every Postgres process: a benchmark that runs what it
    /// measures in process.
    pub(crate) fn this_process_and_postgres(label: &'static str) -> Self {
        Self {
            parties: vec![
                Party {
                    name: label,
                    processes: Processes::Pid(std::process::id()),
                    show_wait: false,
                },
                Party {
                    name: "Postgres",
                    processes: Processes::Named("postgres"),
                    show_wait: false,
                },
            ],
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(parse_cpu_line),
            parties: self.parties.iter().map(Party::read).collect(),
        }
    }

    /// Each party's share of one core between the snapshots, and how busy the machine was.
    pub(crate) fn shares(&self, before: &Snapshot, after: &Snapshot) -> Shares {
        let elapsed_ns = after.at.duration_since(before.at).as_nanos() as f64;
        let labels = self.parties.iter().map(|p| (p.name, p.show_wait));
        shares(
            labels.zip(before.parties.iter().zip(&after.parties)),
            elapsed_ns,
            before.machine.zip(after.machine),
        )
    }

    /// [`Probe::shares`] as one line.
    pub(crate) fn report(&self, before: &Snapshot, after: &Snapshot) -> String {
        self.shares(before, after).line()
    }
}

/// Sums what each process of a party did between two readings; a process that started in
/// between counts whole, one that ended is lost.
fn delta(before: &HashMap<u32, Sched>, after: &HashMap<u32, Sched>) -> Sched {
    after.iter().fold(Sched::default(), |sum, (pid, end)| {
        let start = before.get(pid).copied().unwrap_or_default();
        Sched {
            on_cpu_ns: sum.on_cpu_ns + end.on_cpu_ns.saturating_sub(start.on_cpu_ns),
            waiting_ns: sum.waiting_ns + end.waiting_ns.saturating_sub(start.waiting_ns),
        }
    })
}

type PartyReadings<'a> = (&'a HashMap<u32, Sched>, &'a HashMap<u32, Sched>);

/// Each party's share of one core (and of the interval spent waiting for one) between two
/// readings, and how busy the whole machine was, in percent.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Shares {
    /// Name, % of one core on a CPU, % of the interval runnable but waiting, whether the wait
    /// is worth showing.
    pub(crate) parties: Vec<(&'static str, f64, f64, bool)>,
    pub(crate) machine_busy: Option<f64>,
}

impl Shares {
    /// The party that used the most CPU.
    pub(crate) fn busiest(&self) -> Option<(&'static str, f64)> {
        self.parties
            .iter()
            .map(|(name, cpu, _, _)| (*name, *cpu))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// One line: `CPU, % of one core: server 50, …; machine 75 % busy`.
    pub(crate) fn line(&self) -> String {
        let shares: Vec<String> = self
            .parties
            .iter()
            .map(|(name, cpu, wait, show_wait)| {
                let mut share = format!("{name} {cpu:.0}");
                if *show_wait {
                    share.push_str(&format!(
                        " (runnable but waiting for a core {wait:.1} % of the time)"
                    ));
                }
                share
            })
            .collect();
        let mut line = format!("CPU, % of one core: {}", shares.join(", "));
        if let Some(busy) = self.machine_busy {
            line.push_str(&format!("; machine {busy:.0} % busy"));
        }
        line
    }
}

/// `parties`: each party's name, whether to show its run-queue wait, and its two readings.
fn shares<'a>(
    parties: impl Iterator<Item = ((&'static str, bool), PartyReadings<'a>)>,
    elapsed_ns: f64,
    machine: Option<((u64, u64), (u64, u64))>,
) -> Shares {
    let percent = |ns: u64| ns as f64 / elapsed_ns.max(1.0) * 100.0;
    let parties = parties
        .filter(|(_, (_, after))| !after.is_empty())
        .map(|((name, show_wait), (before, after))| {
            let d = delta(before, after);
            (name, percent(d.on_cpu_ns), percent(d.waiting_ns), show_wait)
        })
        .collect();
    let machine_busy = machine.map(|((busy0, total0), (busy1, total1))| {
        let total = total1.saturating_sub(total0).max(1) as f64;
        busy1.saturating_sub(busy0) as f64 / total * 100.0
    });
    Shares {
        parties,
        machine_busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_cpu_and_wait_time() {
        assert_eq!(
            parse_schedstat("229166428957 56983680153 544124\n"),
            Some(Sched {
                on_cpu_ns: 229_166_428_957,
                waiting_ns: 56_983_680_153
            })
        );
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat("x y z"), None);
    }

    #[test]
    fn the_machine_line_counts_idle_and_iowait_as_not_busy() {
        let stat = "cpu  100 5 20 800 50 1 4 20 0 0\ncpu0 50 2 10 400 25 0 2 10 0 0\n";
        assert_eq!(parse_cpu_line(stat), Some((150, 1000)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_cpu_line("cpu  1 2\n"), None);
    }

    #[test]
    fn the_report_gives_shares_of_one_core_over_the_interval() {
        let at = |on: u64, wait: u64| Sched {
            on_cpu_ns: on,
            waiting_ns: wait,
        };
        let server = (
            HashMap::from([(1, at(0, 0))]),
            HashMap::from([(1, at(500, 0))]),
        );
        let valkey = (
            HashMap::from([(2, at(100, 100))]),
            HashMap::from([(2, at(500, 150))]),
        );
        // A Postgres backend that started during the interval counts whole.
        let postgres = (
            HashMap::from([(3, at(0, 0))]),
            HashMap::from([(3, at(100, 0)), (4, at(150, 0))]),
        );
        let gone = (HashMap::new(), HashMap::new());
        let parties = [
            (("server", false), (&server.0, &server.1)),
            (("Valkey", true), (&valkey.0, &valkey.1)),
            (("Postgres", false), (&postgres.0, &postgres.1)),
            (("elsewhere", true), (&gone.0, &gone.1)),
        ];
        let shares = shares(
            parties.into_iter(),
            1_000.0,
            Some(((100, 1_000), (250, 1_200))),
        );
        assert_eq!(shares.busiest(), Some(("server", 50.0)));
        assert_eq!(
            shares.line(),
            "CPU, % of one core: server 50, Valkey 40 (runnable but waiting for a core 5.0 % of \
             the time), Postgres 25; machine 75 % busy"
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let me = process_sched(std::process::id()).expect("this process's schedstat");
        assert!(me.on_cpu_ns > 0);
    }
}
