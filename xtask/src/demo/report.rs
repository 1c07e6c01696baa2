//! The demo's report: a line per variant and run, then the medians, the
//! ratios against the yardstick and the slots, the bound that applies and
//! where the time goes.

use anyhow::{Context, Result};

use super::variant::Outcome;
use super::{Args, Mode, describe};

pub(super) fn print_outcome(run: u32, runs: u32, o: &Outcome) {
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} ms"));
    println!(
        "run {run}/{runs}  {:<44} {:>6.2} s  refused 1040/1203/1226: {}/{}/{}  rows {}/{}{}  Max_used_connections {}  workers ok {}  spawn exited {}",
        o.mode.label(),
        o.wall.as_secs_f64(),
        o.refusals.get("1040").unwrap_or(&0),
        o.refusals.get("1203").unwrap_or(&0),
        o.refusals.get("1226").unwrap_or(&0),
        o.processed,
        o.rows,
        if o.twice > 0 {
            format!(" ({} twice)", o.twice)
        } else {
            String::new()
        },
        o.max_used,
        o.workers_ok,
        describe(o.status)
    );
    println!(
        "           per worker: start -> connected {} (main -> connected {}); CPU: worker {:.1} ms, spawner {:.2} ms, server {}",
        ms(o.start_to_connected_ms),
        ms(o.main_to_connected_ms),
        o.worker_cpu_ms,
        o.spawner_cpu_ms,
        ms(o.server_cpu_ms)
    );
}

/// Prints the medians over the runs, the ratios and the bound; returns
/// whether every throttled variant passed in every run.
pub(super) fn summarize(
    args: &Args,
    outcomes: &[Outcome],
    capacity: u64,
    cores: usize,
) -> Result<bool> {
    let of = |mode: Mode| outcomes.iter().filter(move |o| o.mode == mode);
    let median_of = |mode: Mode, f: &dyn Fn(&Outcome) -> f64| {
        let mut values: Vec<f64> = of(mode).map(f).collect();
        median(&mut values)
    };
    let wall = |mode: Mode| median_of(mode, &|o| o.wall.as_secs_f64());
    let yardstick = wall(Mode::Yardstick).context("the yardstick did not run")?;
    let slots_ideal = f64::from(args.workers) * args.hold_ms as f64 / 1000.0 / capacity as f64;
    let batches = wall(Mode::Batches);
    println!();
    println!(
        "demo: medians over {} run(s); yardstick = the same workers unthrottled, server admitting all: {yardstick:.2} s; \
         slots ideal = {} × {} ms / {capacity} slots = {slots_ideal:.2} s",
        args.runs, args.workers, args.hold_ms
    );
    println!(
        "| variant | wall time | vs yardstick | vs slots ideal | refused (1040+1203+1226) | rows done |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for &mode in &args.modes {
        let Some(w) = wall(mode) else { continue };
        let refused = median_of(mode, &|o| o.errors() as f64).unwrap_or(0.0);
        let done = median_of(mode, &|o| o.processed as f64).unwrap_or(0.0);
        let rows = of(mode).map(|o| o.rows).max().unwrap_or(0);
        println!(
            "| {} | {w:.2} s | {:.2}× | {:.2}× | {refused:.0} | {done:.0} / {rows} |",
            mode.label(),
            w / yardstick,
            w / slots_ideal
        );
    }
    if let Some(adaptive) = wall(Mode::Adaptive) {
        let bound = if yardstick > slots_ideal {
            format!(
                "the machine: starting and connecting {} workers with no limit at all takes {yardstick:.2} s, \
                 more than the {slots_ideal:.2} s the slots allow",
                args.workers
            )
        } else {
            format!(
                "the slots: {} × {} ms / {capacity} = {slots_ideal:.2} s is more than the {yardstick:.2} s \
                 the machine needs without a limit",
                args.workers, args.hold_ms
            )
        };
        println!(
            "demo: adaptive {adaptive:.2} s = {:.2}× the yardstick (goal ≤ 1.2×){}; the bound is {bound}",
            adaptive / yardstick,
            batches.map_or(String::new(), |b| format!(
                ", {:.1}× faster than the reference's batches (goal ≥ 5×)",
                b / adaptive
            ))
        );
    }
    // Where the time goes, from the yardstick (no waiting in it).
    let cpu = |f: &dyn Fn(&Outcome) -> f64| median_of(Mode::Yardstick, f).unwrap_or(0.0);
    let worker_cpu = cpu(&|o| o.worker_cpu_ms);
    let spawner_cpu = cpu(&|o| o.spawner_cpu_ms);
    let server_cpu = median_of(Mode::Yardstick, &|o| o.server_cpu_ms.unwrap_or(f64::NAN))
        .filter(|v| v.is_finite());
    let total = worker_cpu + spawner_cpu + server_cpu.unwrap_or(0.0);
    let cpu_bound = total * f64::from(args.workers) / 1000.0 / cores as f64;
    println!(
        "demo: where the time goes (yardstick, per worker): start -> connected {:.1} ms; CPU {worker_cpu:.1} ms worker + \
         {spawner_cpu:.2} ms spawner + {} server = {total:.1} ms; × {} workers / {cores} cores = {cpu_bound:.2} s of \
         CPU-bound wall time at the least",
        median_of(Mode::Yardstick, &|o| o
            .start_to_connected_ms
            .unwrap_or(f64::NAN))
        .filter(|v| v.is_finite())
        .unwrap_or(0.0),
        server_cpu.map_or("n/a".to_owned(), |v| format!("{v:.1} ms")),
        args.workers
    );

    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.mode.throttled() && !o.passed())
        .collect();
    for o in &failed {
        println!(
            "demo: FAILED: {} refused {} connections, did {} of {} rows ({} twice), spawn exited {}",
            o.mode.label(),
            o.errors(),
            o.processed,
            o.rows,
            o.twice,
            describe(o.status)
        );
    }
    if of(Mode::Yardstick).any(|o| o.errors() > 0) {
        println!(
            "demo: warning: the yardstick was refused connections although max_connections admitted all; \
             its time is not a clean yardstick"
        );
    }
    if failed.is_empty() {
        println!("demo: PASSED");
    }
    Ok(failed.is_empty())
}

pub(super) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
