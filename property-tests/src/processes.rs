//! Exactness across processes: several OS processes, each with many tasks, hit one key per
//! built-in strategy at one frozen instant through a shared store; together they must admit
//! exactly the strategy's capacity (and delay exactly its queue), no more and no fewer.
//!
//! A test binary plays both roles. Started normally it is the coordinator: it starts the store,
//! runs [`coordinate`] (which starts copies of the binary as workers, releases them at the
//! same moment and adds up what they report) and checks the totals with [`check_totals`]. A
//! worker (the coordinator gives it an environment variable to know) connects to the store and
//! calls [`work`], which waits for the coordinator's go and prints one result line per suite.
//! A worker may report more rows of its own with [`report`] (a group, a refund count).
//!
//! ```no_run
//! use std::process::Command;
//! use std::sync::Arc;
//! use traffik::{InMemoryBackend, SharedBackend};
//! use traffik_property_tests::processes::{Exactness, check_totals, coordinate, work};
//!
//! # async fn connect(_: &str) -> SharedBackend { Arc::new(InMemoryBackend::new()) }
//! # async fn demo() {
//! let plan = Exactness::default();
//! if let Ok(address) = std::env::var("MY_STORE_WORKER") {
//!     let backend: SharedBackend = connect(&address).await;
//!     work(&plan, backend, "run-1").await;
//!     return;
//! }
//! let totals = coordinate(&plan, || {
//!     let mut worker = Command::new(std::env::current_exe().unwrap());
//!     worker.env("MY_STORE_WORKER", "127.0.0.1:1234");
//!     worker
//! })
//! .unwrap();
//! check_totals(&plan, &totals, |_suite| false).unwrap();
//! # }
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use traffik::backend::{Mode, Operation};
use traffik::strategy::{Input, VerdictKind};
use traffik::{Key, Rate, SharedBackend};

use crate::{Suite, builtin_suites};

/// The shape of the run: how many processes, tasks per process and hits per task, under which
/// rate and at which frozen instant.
#[derive(Clone, Debug)]
pub struct Exactness {
    /// Worker processes.
    pub processes: usize,
    /// Tasks per worker.
    pub tasks: usize,
    /// Unit-cost hits per task and suite.
    pub hits: usize,
    /// The rate of every hit.
    pub rate: Rate,
    /// The instant of every hit, microseconds since the Unix epoch.
    pub now_us: u64,
}

impl Default for Exactness {
    /// 4 processes of 64 tasks, 4 hits each, under 200/s.
    fn default() -> Self {
        Exactness {
            processes: 4,
            tasks: 64,
            hits: 4,
            rate: Rate::per_millis(200, 1_000).expect("a valid rate"),
            now_us: 1_700_000_000_123_456,
        }
    }
}

impl Exactness {
    /// Hits every worker makes per suite, all processes together.
    pub fn total_hits(&self) -> u64 {
        (self.processes * self.tasks * self.hits) as u64
    }
}

/// What a row adds up to over all workers: admitted, delayed, denied, errors.
pub type Counts = [u64; 4];

/// Every worker's rows, added up by name.
pub type Totals = BTreeMap<String, Counts>;

/// Prints one result row (`name`: admitted, delayed, denied, errors) for the coordinator.
pub fn report(name: &str, counts: Counts) {
    let [a, d, n, e] = counts;
    println!("RESULT {name} {a} {d} {n} {e}");
}

/// The worker's part: announces it is ready, waits for the coordinator's go (a line on stdin),
/// then for each built-in suite runs `tasks` tasks of `hits` hits on the key `proc-{run}-{suite}`
/// and reports the suite's counts. Errors are counted (and printed to stderr), not fatal.
pub async fn work(plan: &Exactness, backend: SharedBackend, run: &str) {
    println!("READY");
    let mut line = String::new();
    // A closed stdin is a go too: the coordinator is gone, and the counts go nowhere.
    let _ = std::io::stdin().read_line(&mut line);
    for suite in builtin_suites() {
        report(&suite.name, hammer(plan, &backend, &suite, run).await);
    }
}

async fn hammer(plan: &Exactness, backend: &SharedBackend, suite: &Suite, run: &str) -> Counts {
    let key = Key::builder(&format!("proc-{run}-{}", suite.name)).build();
    let mut tasks = Vec::with_capacity(plan.tasks);
    for _ in 0..plan.tasks {
        let (backend, key, strategy) = (Arc::clone(backend), key.clone(), suite.strategy.clone());
        let (hits, input) = (plan.hits, Input { now_us: plan.now_us, rate: plan.rate, cost: 1 });
        tasks.push(tokio::spawn(async move {
            let mut c: Counts = [0; 4];
            for _ in 0..hits {
                let op = Operation { key: &key, strategy: &strategy, input, mode: Mode::Consume };
                match backend.decide(op).await {
                    Ok(v) if v.kind == VerdictKind::Admit => c[0] += 1,
                    Ok(v) if v.kind == VerdictKind::Delay => c[1] += 1,
                    Ok(_) => c[2] += 1,
                    Err(err) => {
                        eprintln!("worker error: {err}");
                        c[3] += 1;
                    }
                }
            }
            c
        }));
    }
    let mut total: Counts = [0; 4];
    for task in tasks {
        match task.await {
            Ok(c) => total.iter_mut().zip(c).for_each(|(t, n)| *t += n),
            Err(err) => {
                eprintln!("worker task failed: {err}");
                total[3] += plan.hits as u64;
            }
        }
    }
    total
}

/// The coordinator's part: starts `plan.processes` workers from `worker()` (a command that
/// runs this binary in its worker role), waits until every one is ready, releases them all at
/// once and adds up their rows. An error says which worker failed and what it printed.
pub fn coordinate(plan: &Exactness, worker: impl Fn() -> Command) -> Result<Totals, String> {
    let mut children = Vec::with_capacity(plan.processes);
    for _ in 0..plan.processes {
        let child = worker()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker process: {e}"))?;
        children.push(child);
    }
    // A worker that hangs would hold the coordinator forever: after a generous bound (a
    // progress guard, not a timing check) every worker still running is killed, which ends
    // the run with an error naming the worker.
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    let watchdog = std::sync::mpsc::channel::<()>();
    let (done, finished) = watchdog;
    std::thread::spawn(move || {
        if finished.recv_timeout(std::time::Duration::from_secs(300)).is_err() {
            eprintln!("workers still running after 300 s: killing {pids:?}");
            let _ = Command::new("kill").arg("-9").args(&pids).status();
        }
    });
    let mut readers = Vec::with_capacity(children.len());
    for child in &mut children {
        let out = child.stdout.take().ok_or("a worker without stdout")?;
        let mut reader = BufReader::new(out);
        // A test harness may print its own lines first.
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("a worker exited before it was ready; it printed: {seen}"));
            }
            // A test harness may print a test's name on the same line.
            if line.trim_end().ends_with("READY") {
                break;
            }
            seen.push_str(&line);
        }
        readers.push(reader);
    }
    for child in &mut children {
        let stdin = child.stdin.as_mut().ok_or("a worker without stdin")?;
        stdin.write_all(b"go\n").map_err(|e| format!("cannot release a worker: {e}"))?;
    }
    let mut totals = Totals::new();
    let mut outputs = Vec::new();
    for reader in readers {
        let mut output = String::new();
        for line in reader.lines() {
            let line = line.map_err(|e| e.to_string())?;
            if let Some(row) = line.find("RESULT ").map(|at| &line[at + 7..]) {
                let mut fields = row.split_whitespace();
                let name = fields.next().ok_or_else(|| format!("a result row without a name: {line}"))?;
                let total = totals.entry(name.to_owned()).or_default();
                for slot in total.iter_mut() {
                    let n: u64 =
                        fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| format!("a bad row: {line}"))?;
                    *slot += n;
                }
            }
            output.push_str(&line);
            output.push('\n');
        }
        outputs.push(output);
    }
    for (child, output) in children.iter_mut().zip(&outputs) {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a worker failed ({status}); it printed:\n{output}"));
        }
    }
    let _ = done.send(());
    Ok(totals)
}

/// Checks every built-in suite's totals: every hit accounted for, never more than the capacity
/// admitted (or the queue delayed), and exactly the capacity and queue when the hits far
/// outnumber them. Errors fail a suite unless `errors_allowed(suite)` (a store path that may
/// give up under contention, e.g. a compare-and-swap path for custom strategies).
pub fn check_totals(plan: &Exactness, totals: &Totals, errors_allowed: impl Fn(&Suite) -> bool) -> Result<(), String> {
    let all = plan.total_hits();
    let mut failures = Vec::new();
    for suite in builtin_suites() {
        let Some(&[admitted, delayed, denied, errors]) = totals.get(&suite.name) else {
            failures.push(format!("{}: no result", suite.name));
            continue;
        };
        let (capacity, queue) = (suite.full_quota(&plan.rate), u64::from(suite.queue()));
        println!(
            "{:<24} admitted {admitted:>3} (capacity {capacity}), delayed {delayed} (queue {queue}), denied {denied}, errors {errors}",
            suite.name
        );
        if admitted + delayed + denied + errors != all {
            failures.push(format!(
                "{}: {} hits accounted for, {all} made",
                suite.name,
                admitted + delayed + denied + errors
            ));
        }
        if capacity + queue >= all {
            failures.push(format!("{}: {all} hits cannot exhaust a capacity of {capacity} + {queue}", suite.name));
        }
        if (admitted, delayed) != (capacity, queue) {
            failures
                .push(format!("{}: admitted {admitted} + delayed {delayed}, want {capacity} + {queue}", suite.name));
        }
        if errors > 0 && !errors_allowed(&suite) {
            failures.push(format!("{}: {errors} errors", suite.name));
        }
    }
    if failures.is_empty() {
        println!(
            "exact across processes ({} processes x {} tasks x {} hits per strategy)",
            plan.processes, plan.tasks, plan.hits
        );
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}
