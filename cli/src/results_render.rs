//! Renders [`Results`] as the study prints them: aligned text, Markdown, CSV or JSON.
//!
//! Text and Markdown print two tables (final eval loss as `mean ± std (n)`, 4 decimals; and the
//! same relative to Standard as a signed percentage), then the best lr per init and the cells
//! that diverged, failed, were cancelled or are incomplete (`*`).

use std::fmt::Write as _;

use serde_json::json;

use lorasweep_report::{Cell, Results, fmt_lr};

/// Output formats of `lorasweep results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned plain-text tables.
    Table,
    /// GitHub-flavoured Markdown tables.
    Markdown,
    /// One row per cell.
    Csv,
    /// The whole structure.
    Json,
}

/// Renders `results` in `format`.
pub(crate) fn render(results: &Results, format: Format, title: &str) -> String {
    match format {
        Format::Table => text(results, title, false),
        Format::Markdown => text(results, title, true),
        Format::Csv => csv(results),
        Format::Json => json(results),
    }
}

fn loss_cell(c: &Cell) -> String {
    match (c.mean, c.std) {
        (Some(m), Some(s)) => {
            let mark = if c.complete() { "" } else { "*" };
            format!("{m:.4} ± {s:.4} (n={}){mark}", c.n)
        }
        _ if c.pending > 0 => "…".to_string(),
        _ => "—".to_string(),
    }
}

fn pct_cell(c: &Cell) -> String {
    match c.vs_standard_pct {
        Some(p) => {
            let mark = if c.complete() { "" } else { "*" };
            format!("{p:+.2}%{mark}")
        }
        None => "—".to_string(),
    }
}

fn table(header: &[String], rows: &[Vec<String>], markdown: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        if markdown { format!("| {} |\n", padded.join(" | ")) } else { format!("{}\n", padded.join("  ")) }
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&if markdown { format!("|-{}-|\n", rule.join("-|-")) } else { format!("{}\n", rule.join("  ")) });
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn text(r: &Results, title: &str, markdown: bool) -> String {
    let mut header = vec!["lr".to_string()];
    header.extend(r.inits.iter().map(|i| i.title().to_string()));
    let rows = |f: fn(&Cell) -> String| -> Vec<Vec<String>> {
        (0..r.lrs.len())
            .map(|row| {
                let mut cells = vec![fmt_lr(r.lrs[row])];
                cells.extend((0..r.inits.len()).map(|col| f(r.at(row, col))));
                cells
            })
            .collect()
    };
    let h = if markdown { "## " } else { "" };
    let mut out = String::new();
    let _ = writeln!(out, "{h}Final eval loss — {title} (mean ± std over seeds)\n");
    out.push_str(&table(&header, &rows(loss_cell), markdown));
    let _ = writeln!(out, "\n{h}Relative to Standard at the same lr\n");
    out.push_str(&table(&header, &rows(pct_cell), markdown));
    let _ = writeln!(out, "\n{h}Best lr per init\n");
    for (init, lr) in &r.best_lr {
        let bullet = if markdown { "- " } else { "  " };
        match lr {
            Some(lr) => {
                let col = r.inits.iter().position(|i| i == init).expect("best_lr lists only present inits");
                let row = r.lrs.iter().position(|l| l == lr).expect("best lr is one of the rows");
                let mean = r.at(row, col).mean.unwrap_or(f64::NAN);
                let _ = writeln!(out, "{bullet}{}: {} ({mean:.4})", init.title(), fmt_lr(*lr));
            }
            None => {
                let _ = writeln!(out, "{bullet}{}: no complete cell yet", init.title());
            }
        }
    }
    let notes: Vec<String> = r
        .cells
        .iter()
        .filter(|c| c.diverged + c.failed + c.cancelled + c.pending > 0)
        .map(|c| {
            let mut parts = Vec::new();
            for (n, what) in
                [(c.diverged, "diverged"), (c.failed, "failed"), (c.cancelled, "cancelled"), (c.pending, "pending")]
            {
                if n > 0 {
                    parts.push(format!("{n} {what}"));
                }
            }
            format!("{} @ {}: {} of {}", c.init.title(), fmt_lr(c.lr), parts.join(", "), c.jobs)
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{h}Cells with diverged, failed, cancelled or pending jobs\n");
        for n in notes {
            let _ = writeln!(out, "{}{n}", if markdown { "- " } else { "  " });
        }
    }
    if r.cells.iter().any(|c| !c.complete() && c.n > 0) {
        let _ = writeln!(out, "\n`*`: incomplete cell (not every seed has a final eval loss).");
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

fn csv(r: &Results) -> String {
    let mut out = String::from("init,lr,mean,std,n,jobs,diverged,failed,cancelled,pending,vs_standard_pct\n");
    for c in &r.cells {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{}",
            c.init.name(),
            c.lr,
            opt(c.mean),
            opt(c.std),
            c.n,
            c.jobs,
            c.diverged,
            c.failed,
            c.cancelled,
            c.pending,
            opt(c.vs_standard_pct)
        );
    }
    out
}

fn json(r: &Results) -> String {
    let best: serde_json::Map<String, serde_json::Value> =
        r.best_lr.iter().map(|(i, lr)| (i.name().to_string(), json!(lr))).collect();
    let v = json!({
        "inits": r.inits.iter().map(|i| i.name()).collect::<Vec<_>>(),
        "lrs": r.lrs,
        "cells": r.cells,
        "best_lr": best,
    });
    serde_json::to_string_pretty(&v).expect("results are plain data")
}

#[cfg(test)]
mod tests {
    use lorasweep_common::{JobState, LoraInit};

    use super::*;
    use lorasweep_report::JobResult;

    fn sample() -> Results {
        let mut jobs = Vec::new();
        for (init, base) in [(LoraInit::Standard, 2.2), (LoraInit::Reversed, 2.3)] {
            for (k, lr) in [1e-4, 5e-3].into_iter().enumerate() {
                for seed in 42..44 {
                    let diverge = init == LoraInit::Reversed && lr == 5e-3;
                    jobs.push(JobResult {
                        init,
                        lr,
                        seed,
                        state: if diverge { JobState::Diverged } else { JobState::Succeeded },
                        final_eval_loss: Some(if diverge { 7.0 } else { base + k as f64 * 0.01 + seed as f64 * 1e-3 }),
                    });
                }
            }
        }
        Results::compute(&jobs)
    }

    #[test]
    fn markdown_has_both_tables_in_study_order_and_marks_divergence() {
        let md = render(&sample(), Format::Markdown, "demo");
        assert!(md.contains("| lr   | Standard"), "{md}");
        let std_pos = md.find("Standard").unwrap();
        let rev_pos = md.find("Reversed").unwrap();
        assert!(std_pos < rev_pos);
        // Standard at 1e-4: mean of 2.242 and 2.243.
        assert!(md.contains("2.2425 ± 0.0007 (n=2)"), "{md}");
        assert!(md.contains("Relative to Standard"));
        assert!(md.contains("Reversed @ 5e-3: 2 diverged of 2"), "{md}");
        assert!(md.contains("- Standard: 1e-4 (2.2425)"), "{md}");
    }

    #[test]
    fn csv_has_one_row_per_cell_and_json_parses() {
        let r = sample();
        let csv = render(&r, Format::Csv, "x");
        assert_eq!(csv.lines().count(), 1 + r.cells.len());
        let v: serde_json::Value = serde_json::from_str(&render(&r, Format::Json, "x")).unwrap();
        assert_eq!(v["cells"].as_array().unwrap().len(), 4);
        assert_eq!(v["best_lr"]["standard"], json!(1e-4));
    }

    #[test]
    fn relative_table_is_signed() {
        let t = render(&sample(), Format::Table, "x");
        assert!(t.contains("+0.00%") && t.contains("+4."), "{t}");
    }
}
